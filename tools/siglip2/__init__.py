"""SigLIP2 + Empathic-Insight-Face heads -> one ONNX model (workstation side; the
``export`` extra). See tools/siglip2/export.py and docs/models.md."""
