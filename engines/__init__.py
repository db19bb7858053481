"""Inference for emotion-agent: the model manifest, the bundled ONNX models and the
backends that run them (TensorRT on NVIDIA GPUs and Jetson, ONNX Runtime elsewhere).

Nothing in ``engines`` imports from ``agent``: the dependency points one way.
"""
