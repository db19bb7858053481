#!/usr/bin/env python3
"""Train EmotionNet (ours) on landmarks from facial_expressions, export it to ONNX.

    python3 tools/emotionnet/train.py [--cache build/emotionnet/landmarks.npz] [--seed 0]
                                      [--out engines/models/emotionnet.onnx] [--tune]

Needs PyTorch (training only; never a runtime dependency: the result is a plain ONNX
file) plus numpy, onnx and onnxruntime. Run ``extract_landmarks.py`` first.

1. Labels from ``legend.csv`` (lower-cased, duplicates merged, conflicts dropped);
   landmarks from the extraction cache; features ``engines.landmarks.normalize(points,
   "centered_aligned_rms")`` -- the runtime's contract, in one place.
2. A person-disjoint split (``dataset.person_split``: 20 % of the images to validation,
   stratified by class as far as whole persons allow, fixed seed) over the candidate
   classes (every label but fear, 21 images, and contempt, 9).
3. Classes, chosen without looking at validation results:
   (a) measurable: validation holds >= ``MIN_VAL_IMAGES`` images of the class from
   >= ``MIN_VAL_PERSONS`` persons (fewer would describe a few faces, not the class);
   (b) learnable: trained on 80 % of the *training* persons, the class reaches F1 >=
   ``MIN_INNER_F1`` on the other 20 % (an inner person-disjoint split); below that its
   predictions would mostly be false alarms.
4. NVIDIA EmotionNet's shape: five fully connected layers, batch norm + ReLU + dropout
   after the first four, softmax output: 136 -> 256 -> 256 -> 128 -> 64 -> K.
   Class-weighted cross-entropy (weights ~ 1/sqrt(frequency)) with label smoothing for
   the noisy labels; augmentation on the landmarks: horizontal flip (iBUG-68 index swap)
   and small point jitter, both re-normalised. AdamW + one-cycle schedule, fixed epochs
   (no early stopping on validation). Single-threaded and deterministic: the same
   command gives the same weights, hence the same ONNX bytes.
5. Trains on all training persons, writes ``build/emotionnet/weights.npz`` (raw
   weights) and ``split.json``, then the ONNX via ``export.py`` (batch norm folded into
   the Gemm weights), and checks the ONNX against the PyTorch model. ``evaluate.py``
   measures the shipped file.

``--tune``: stop after step 3 (the inner split used for class and hyperparameter
choices); writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from engines.landmarks import normalize  # noqa: E402
from tools.emotionnet import export  # noqa: E402
from tools.emotionnet.dataset import (  # noqa: E402
    BUILD_DIR,
    DEFAULT_CACHE,
    DEFAULT_DATA_DIR,
    flip_landmarks,
    person_split,
    read_legend,
)
from tools.emotionnet.evaluate import confusion, report  # noqa: E402

NORMALIZATION = "centered_aligned_rms"
# the classes with enough data to consider (fear: 21 images, contempt: 9 are not)
CANDIDATES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust")
MIN_VAL_IMAGES = 40
MIN_VAL_PERSONS = 15
MIN_INNER_F1 = 0.3  # a class the net cannot tell apart on held-out training persons
VAL_FRACTION = 0.2

HIDDEN = (256, 256, 128, 64)
DROPOUT = 0.3
EPOCHS = 60
BATCH = 128
LR = 1e-3
WEIGHT_DECAY = 1e-4
LABEL_SMOOTHING = 0.1
CLASS_WEIGHT_POWER = 0.5  # weight ~ frequency ** -power (0: none, 1: fully balanced)
JITTER = 0.02  # point noise, in units of the face's RMS radius
FLIP_P = 0.5


def load(cache: str, data_dir: str):
    labels, persons, _ = read_legend(os.path.join(data_dir, "legend.csv"))
    with np.load(cache) as z:
        images = [str(n) for n in z["images"]]
        points = z["points"].astype(np.float64)
    return images, points, labels, persons


def choose_classes(
    val: Sequence[str], labels: Dict[str, str], persons: Dict[str, str]
) -> Tuple[List[str], List[dict]]:
    table, chosen = [], []
    for c in CANDIDATES:
        imgs = [i for i in val if labels[i] == c]
        per_person = Counter(persons[i] for i in imgs)
        n_persons = len(per_person)
        top = max(per_person.values()) / len(imgs) if imgs else 0.0
        ok = len(imgs) >= MIN_VAL_IMAGES and n_persons >= MIN_VAL_PERSONS
        table.append(
            {
                "class": c,
                "val_images": len(imgs),
                "val_persons": n_persons,
                "val_top_person_share": round(top, 3),
                "kept": ok,
            }
        )
        if ok:
            chosen.append(c)
    return chosen, table


def augment(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip half of the faces, jitter every point; return normalised features [N, 136]."""
    pts = np.array(points, dtype=np.float64)
    flip = rng.random(len(pts)) < FLIP_P
    pts[flip] = flip_landmarks(pts[flip])
    feats = normalize(pts, NORMALIZATION).reshape(-1, 68, 2).astype(np.float64)
    feats += rng.normal(0.0, JITTER, size=feats.shape)
    return normalize(feats, NORMALIZATION)


def make_net(k: int):
    import torch.nn as nn

    layers: List[nn.Module] = []
    d = 136
    for h in HIDDEN:
        layers += [nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(DROPOUT)]
        d = h
    layers.append(nn.Linear(d, k))
    return nn.Sequential(*layers)


def train_net(points: np.ndarray, y: np.ndarray, k: int, seed: int, log=print):
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = make_net(k)
    freq = np.bincount(y, minlength=k).astype(np.float64)
    cw = (freq / freq.sum()) ** -CLASS_WEIGHT_POWER
    cw = cw / (cw * freq).sum() * freq.sum()  # mean weight per sample = 1
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(cw, dtype=torch.float32), label_smoothing=LABEL_SMOOTHING
    )
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = len(y) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch, pct_start=0.1
    )
    yt = torch.tensor(y, dtype=torch.int64)
    t0 = time.time()
    for epoch in range(EPOCHS):
        net.train()
        x = torch.tensor(augment(points, rng), dtype=torch.float32)
        order = torch.tensor(rng.permutation(len(y)), dtype=torch.int64)
        total = 0.0
        for s in range(steps_per_epoch):  # drop the last partial batch (batch norm)
            idx = order[s * BATCH : (s + 1) * BATCH]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            log(
                f"  epoch {epoch + 1}/{EPOCHS}: loss {total / steps_per_epoch:.4f} "
                f"({time.time() - t0:.0f} s)"
            )
    net.eval()
    return net, cw


def predict(net, feats: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.softmax(net(torch.tensor(feats, dtype=torch.float32)), dim=1).numpy()


def weights_dict(net, labels: Sequence[str]) -> Dict[str, np.ndarray]:
    import torch.nn as nn

    out: Dict[str, np.ndarray] = {"labels": np.array(list(labels)), "n_layers": np.array(0)}
    lin = [m for m in net if isinstance(m, nn.Linear)]
    bns = [m for m in net if isinstance(m, nn.BatchNorm1d)]
    for i, m in enumerate(lin):
        out[f"fc{i}.weight"] = m.weight.detach().numpy().copy()
        out[f"fc{i}.bias"] = m.bias.detach().numpy().copy()
    for i, m in enumerate(bns):
        out[f"bn{i}.weight"] = m.weight.detach().numpy().copy()
        out[f"bn{i}.bias"] = m.bias.detach().numpy().copy()
        out[f"bn{i}.running_mean"] = m.running_mean.detach().numpy().copy()
        out[f"bn{i}.running_var"] = m.running_var.detach().numpy().copy()
    out["n_layers"] = np.array(len(lin))
    out["bn_eps"] = np.array(bns[0].eps)
    return out


def _summary(y: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> str:
    r = report(confusion(y, probs.argmax(1), len(labels)))
    per = ", ".join(
        f"{c} P{r['precision'][i]:.2f}/R{r['recall'][i]:.2f}/F{r['f1'][i]:.2f}"
        for i, c in enumerate(labels)
    )
    return (
        f"accuracy {r['accuracy']:.3f}, macro F1 {r['macro'][2]:.3f}, "
        f"balanced accuracy {r['balanced_accuracy']:.3f}; {per}"
    )


def _counts(names: Sequence[str], labels: Dict[str, str], persons: Dict[str, str], classes):
    c = Counter(labels[n] for n in names)
    p = {k: len({persons[n] for n in names if labels[n] == k}) for k in classes}
    return {k: c[k] for k in classes}, p, len({persons[n] for n in names})


def fit_and_score(
    train: Sequence[str],
    val: Sequence[str],
    classes: Sequence[str],
    data,
    seed: int,
    label: str,
):
    """Train on ``train``, score on ``val``: (net, val probs, y_val, report)."""
    row, points, labels, persons = data
    classes = list(classes)

    def xy(names):
        idx = np.array([row[n] for n in names])
        return points[idx], np.array([classes.index(labels[n]) for n in names])

    p_tr, y_tr = xy(train)
    p_va, y_va = xy(val)
    for name, names in (("train", train), (label, val)):
        counts, _, n_persons = _counts(names, labels, persons, classes)
        print(f"  {name}: {len(names)} images, {n_persons} persons, {counts}")
    net, cw = train_net(p_tr, y_tr, len(classes), seed)
    print(f"  class weights: {dict(zip(classes, np.round(cw, 3).tolist()))}")
    probs = predict(net, normalize(p_va, NORMALIZATION))
    print(f"  {label} (PyTorch): {_summary(y_va, probs, classes)}")
    fit = predict(net, normalize(p_tr, NORMALIZATION))
    print(f"  train (PyTorch, no augmentation): {_summary(y_tr, fit, classes)}")
    return net, probs, y_va, report(confusion(y_va, probs.argmax(1), len(classes)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="extract_landmarks.py output")
    ap.add_argument("--data", default=DEFAULT_DATA_DIR, help="data set folder (legend.csv)")
    ap.add_argument("--out", default=export.DEFAULT_OUT, help="ONNX file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune", action="store_true", help="stop after the inner split; no output")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    images, points, labels, persons = load(args.cache, args.data)
    row = {n: i for i, n in enumerate(images)}
    data = (row, points, labels, persons)
    usable = [n for n in images if labels[n] in CANDIDATES]
    train, val = person_split(usable, labels, persons, CANDIDATES, VAL_FRACTION, args.seed)
    assert not {persons[i] for i in train} & {persons[i] for i in val}

    # 1. measurable: enough validation images from enough different persons
    measurable, table = choose_classes(val, labels, persons)
    print(
        f"1. measurable on validation (>= {MIN_VAL_IMAGES} images from >= "
        f"{MIN_VAL_PERSONS} persons):"
    )
    for t in table:
        print(
            f"  {t['class']:10s} {t['val_images']:5d} images {t['val_persons']:4d} persons "
            f"(largest person {t['val_top_person_share']:.0%}) "
            f"{'yes' if t['kept'] else 'no'}"
        )
    # 2. learnable: F1 >= MIN_INNER_F1 on a person-disjoint inner split of the training
    #    persons (validation is not looked at to choose classes or hyperparameters)
    tr = [n for n in train if labels[n] in measurable]
    inner_tr, inner_va = person_split(tr, labels, persons, measurable, VAL_FRACTION, args.seed + 1)
    print(f"2. learnable (inner split of the training persons, F1 >= {MIN_INNER_F1}):")
    _, _, _, inner = fit_and_score(inner_tr, inner_va, measurable, data, args.seed, "inner val")
    classes = [c for i, c in enumerate(measurable) if inner["f1"][i] >= MIN_INNER_F1]
    for i, c in enumerate(measurable):
        table[CANDIDATES.index(c)]["inner_f1"] = round(float(inner["f1"][i]), 3)
    for t in table:
        t["shipped"] = t["class"] in classes
    print(f"  -> classes: {classes}")
    if args.tune:
        return 0

    # 3. the model: all training persons, the chosen classes; measured on validation
    train = [n for n in train if labels[n] in classes]
    val = [n for n in val if labels[n] in classes]
    print("3. final model:")
    net, probs, _, _ = fit_and_score(train, val, classes, data, args.seed, "val")
    os.makedirs(BUILD_DIR, exist_ok=True)
    weights = weights_dict(net, classes)
    np.savez(os.path.join(BUILD_DIR, "weights.npz"), **weights)
    tr_counts, tr_persons, tr_n = _counts(train, labels, persons, classes)
    va_counts, va_persons, va_n = _counts(val, labels, persons, classes)
    split = {
        "seed": args.seed,
        "classes": classes,
        "candidates": table,
        "train_counts": tr_counts,
        "train_class_persons": tr_persons,
        "train_persons": tr_n,
        "val_counts": va_counts,
        "val_class_persons": va_persons,
        "val_persons": va_n,
        "val": {n: labels[n] for n in val},
        "val_person_names": sorted({persons[n] for n in val}),
    }
    with open(os.path.join(BUILD_DIR, "split.json"), "w", encoding="utf-8") as f:
        json.dump(split, f, indent=1, sort_keys=True)
    digest = export.write(weights, args.out)
    from tools.emotionnet.evaluate import run_onnx

    p_va = points[np.array([row[n] for n in val])]
    onnx_probs = run_onnx(args.out, normalize(p_va, NORMALIZATION))
    diff = float(np.abs(onnx_probs - probs).max())
    same = int((onnx_probs.argmax(1) == probs.argmax(1)).sum())
    print(
        f"ONNX vs PyTorch on validation: max abs prob diff {diff:.2e}, same argmax "
        f"{same}/{len(probs)}"
    )
    print(f"{digest}  {args.out}")
    print(f"done in {time.time() - t0:.0f} s (torch {torch.__version__}, numpy {np.__version__})")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
