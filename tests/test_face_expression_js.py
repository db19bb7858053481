"""face_expression.onnx (the ported face-api.js FaceExpressionNet) against the JavaScript.

The same inputs go through face-api's own ``faceExpressionNet.forwardInput`` (npm
@vladmandic/face-api on tfjs's cpu backend, the pinned package scripts/test.sh installs
in build/npm) and through the ONNX graph on onnxruntime; the probabilities must agree
within 1e-4. Inputs: face crops cut from the package's demo photos at the boxes our own
detector finds there (the runtime's crop), and seeded noise. Full verification (end to
end, more images): tools/faceapi/verify.js + verify.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NPM_DIR = os.path.join(REPO_ROOT, "build", "npm")
PKG = os.path.join(NPM_DIR, "node_modules", "@vladmandic", "face-api")
MODEL = os.path.join(REPO_ROOT, "engines", "models", "face_expression.onnx")

JS = r"""
const path = require('path');
const fs = require('fs');
const { createRequire } = require('module');
const [npmDir, inFile, n] = process.argv.slice(2);
const req = createRequire(path.join(npmDir, 'package.json'));
const tf = req('@tensorflow/tfjs');
const faceapi = req('@vladmandic/face-api/dist/face-api.node-wasm.js');
const modelDir = path.join(path.dirname(req.resolve('@vladmandic/face-api/package.json')), 'model');
(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
  await faceapi.nets.faceExpressionNet.loadFromDisk(modelDir);
  const buf = fs.readFileSync(inFile);
  const x = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  const count = Number(n);
  const tensors = [];
  for (let i = 0; i < count; i++) {
    tensors.push(tf.tensor3d(x.slice(i * 112 * 112 * 3, (i + 1) * 112 * 112 * 3), [112, 112, 3]));
  }
  const input = await faceapi.toNetInput(tensors);
  const out = faceapi.nets.faceExpressionNet.forwardInput(input);
  const probs = await out.array();
  process.stdout.write(JSON.stringify({ labels: faceapi.FACE_EXPRESSION_LABELS, probs }));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _inputs() -> np.ndarray:
    """RGB float32 [n, 112, 112, 3]: face crops of the demo photos, then noise."""
    import cv2

    from agent.perception.faceapi import (
        decode_tiny_face_detector,
        detector_input,
        face_crop_box,
        landmark_input,
    )

    det = ort.InferenceSession(
        os.path.join(REPO_ROOT, "engines", "models", "tiny_face_detector.onnx"),
        providers=["CPUExecutionProvider"],
    )
    crops = []
    for name in ("sample1.jpg", "sample2.jpg", "sample3.jpg"):
        img = cv2.imread(os.path.join(PKG, "demo", name), cv2.IMREAD_COLOR)
        if img is None:
            continue
        h, w = img.shape[:2]
        (grid,) = det.run(["grid"], {"image": detector_input(img, 416)[None]})
        for x1, y1, x2, y2, _ in decode_tiny_face_detector(grid, 416, 0.5, 0.4, (w, h))[:3]:
            cx, cy, cw, ch = face_crop_box((x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h), w, h)
            crops.append(landmark_input(img[cy : cy + ch, cx : cx + cw])[..., ::-1])  # RGB
    rng = np.random.default_rng(7)
    crops += [rng.uniform(0, 255, (112, 112, 3)) for _ in range(2)]
    return np.ascontiguousarray(np.stack(crops), dtype=np.float32)


@pytest.mark.skipif(
    shutil.which("node") is None or not os.path.isdir(PKG),
    reason="node or the pinned face-api package (build/npm, installed by scripts/test.sh) "
    "is missing",
)
def test_face_expression_onnx_equals_javascript(tmp_path):
    x = _inputs()
    assert len(x) >= 5  # at least three real faces besides the noise
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    (tmp_path / "ref.js").write_text(JS, encoding="utf-8")
    run = subprocess.run(
        ["node", str(tmp_path / "ref.js"), NPM_DIR, str(tmp_path / "in.bin"), str(len(x))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    ref = json.loads(run.stdout)
    faceapi_labels = ["neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised"]
    assert ref["labels"] == faceapi_labels
    js = np.array(ref["probs"], dtype=np.float64)
    sess = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    (ours,) = sess.run(["probs"], {"image": np.ascontiguousarray(x[..., ::-1])})  # BGR in
    assert ours.shape == js.shape == (len(x), 7)
    assert np.abs(ours - js).max() < 1e-4
    assert (ours.argmax(1) == js.argmax(1)).all()
    # the comparison has power: R and B swapped gives other probabilities
    (swapped,) = sess.run(["probs"], {"image": x})
    assert np.abs(swapped - js).max() > 1e-3
