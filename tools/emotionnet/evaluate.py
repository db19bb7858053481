#!/usr/bin/env python3
"""Measure the shipped EmotionNet ONNX on the person-disjoint validation split.

    python3 tools/emotionnet/evaluate.py [--model engines/models/emotionnet.onnx]
                                         [--cache build/emotionnet/landmarks.npz]
                                         [--split build/emotionnet/split.json]

Runs the ONNX file itself with onnxruntime on the validation images of the split that
train.py wrote (features: ``agent.perception.landmarks.normalize(points, "centered_aligned_rms")``)
and prints the model card's tables as Markdown: per-class precision / recall / F1,
macro and weighted averages, accuracy next to the majority-class baseline, the confusion
matrix, and accuracy per extraction path. numpy + onnxruntime only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from agent.perception.landmarks import normalize  # noqa: E402
from tools.emotionnet.dataset import BUILD_DIR, DEFAULT_CACHE  # noqa: E402

DEFAULT_MODEL = os.path.join(REPO_ROOT, "engines", "models", "emotionnet.onnx")
DEFAULT_SPLIT = os.path.join(BUILD_DIR, "split.json")
PATH_NAMES = ("det2x", "det3x", "fallback")


def confusion(y_true: Sequence[int], y_pred: Sequence[int], k: int) -> np.ndarray:
    """[k, k] counts, rows = true class, columns = predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def report(cm: np.ndarray) -> Dict[str, object]:
    """Per-class precision/recall/F1/support, macro and weighted averages, accuracy."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    w = support / max(support.sum(), 1.0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "macro": (precision.mean(), recall.mean(), f1.mean()),
        "weighted": ((precision * w).sum(), (recall * w).sum(), (f1 * w).sum()),
        "accuracy": tp.sum() / max(cm.sum(), 1),
        "balanced_accuracy": recall.mean(),
    }


def markdown(
    cm: np.ndarray, labels: Sequence[str], majority: int, extra: Dict[str, float]
) -> List[str]:
    r = report(cm)
    base = np.zeros_like(cm)
    base[:, majority] = cm.sum(axis=1)  # always predict the majority class
    rb = report(base)
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for i, name in enumerate(labels):
        lines.append(
            f"| {name} | {r['precision'][i]:.3f} | {r['recall'][i]:.3f} | {r['f1'][i]:.3f} "
            f"| {r['support'][i]} |"
        )
    n = int(cm.sum())
    lines.append("| macro avg | {:.3f} | {:.3f} | {:.3f} | {} |".format(*r["macro"], n))
    lines.append("| weighted avg | {:.3f} | {:.3f} | {:.3f} | {} |".format(*r["weighted"], n))
    lines.append("")
    lines.append("| | accuracy | balanced accuracy | macro F1 |")
    lines.append("|---|---:|---:|---:|")
    lines.append(
        f"| EmotionNet | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | {r['macro'][2]:.3f} |"
    )
    lines.append(
        f"| majority class ({labels[majority]}) | {rb['accuracy']:.3f} "
        f"| {rb['balanced_accuracy']:.3f} | {rb['macro'][2]:.3f} |"
    )
    for key, value in extra.items():
        lines.append(f"| {key} | {value:.3f} | | |")
    lines.append("")
    lines.append("Confusion matrix (rows: true label, columns: predicted):")
    lines.append("")
    lines.append("| true \\ predicted | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---:|" * len(labels))
    for i, name in enumerate(labels):
        lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in cm[i]) + " |")
    return lines


def run_onnx(model: str, feats: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    spec = sess.get_inputs()[0]
    x = feats.astype(np.float32).reshape(len(feats), *[int(d) for d in spec.shape[1:]])
    (probs,) = sess.run(["probs"], {spec.name: x})
    return probs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    ap.add_argument("--split", default=DEFAULT_SPLIT, help="written by train.py")
    args = ap.parse_args(argv)

    with open(args.split, encoding="utf-8") as f:
        split = json.load(f)
    labels: List[str] = split["classes"]
    val = split["val"]  # image -> label
    with np.load(args.cache) as z:
        index = {str(n): i for i, n in enumerate(z["images"])}
        rows = np.array([index[n] for n in sorted(val)])
        points, paths = z["points"][rows], z["paths"][rows]
    y = np.array([labels.index(val[n]) for n in sorted(val)])
    probs = run_onnx(args.model, normalize(points, "centered_aligned_rms"))
    pred = probs.argmax(axis=1)
    cm = confusion(y, pred, len(labels))
    train_counts = np.array([split["train_counts"][c] for c in labels])
    majority = int(train_counts.argmax())  # the baseline predicts the train majority class
    extra = {}
    for p, name in enumerate(PATH_NAMES):
        m = paths == p
        if m.any():
            extra[f"EmotionNet on `{name}` images only (n={int(m.sum())})"] = float(
                (pred[m] == y[m]).mean()
            )
    print(f"validation: {len(y)} images, {split['val_persons']} persons; model {args.model}")
    print()
    print("\n".join(markdown(cm, labels, majority, extra)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
