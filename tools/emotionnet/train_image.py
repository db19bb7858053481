#!/usr/bin/env python3
"""Train the small image expression classifier (``expression_cnn``) on FER+ and
facial_expressions face crops.

    python3 tools/emotionnet/train_image.py [--seed 0] [--threads 1]
                                            [--out engines/models/expression_cnn.onnx]
                                            [--config N]

Needs PyTorch (training only; the result is a plain ONNX file), numpy, onnx,
onnxruntime. Run ``extract_landmarks.py``, ``extract_fer.py`` (their boxes) and
``image_data.py`` (the crops) first.

Data (the same splits as EmotionNet v2, ``train.py``):

* FER+ ``Training`` rows with the vote distribution over the seven classes as a **soft
  target**; ``PublicTest`` to select; ``PrivateTest`` only to report.
* facial_expressions: the person-disjoint split of ``train.load_fe`` (seed 0); training
  persons' images one-hot with label smoothing 0.1; validation only to report. Writes
  ``build/emotionnet/split.json`` if it is not there (``compare.py`` reads it).

Input: the runtime's 112x112 face crop as a 56x56 luma plane (``image_data.gray_pool``),
scaled ``(v / 255 - 0.5) / 0.25``; the ONNX graph computes that itself
(``export_image.py``). Model: four stages of 3x3 convolutions (batch norm, ReLU) with
2x2 max pooling between them, global average pooling, dropout, one fully connected
layer. Loss: soft-target cross-entropy, each sample weighted by its target's class
weights (``class mass ** -power``, mean 1). Augmentation: horizontal mirror (p 0.5),
a random similarity transform (rotation, scale, shift), brightness and contrast.
AdamW, one-cycle schedule. ``torch.use_deterministic_algorithms``; the same command
with the same ``--threads`` gives the same weights, hence the same ONNX bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tools.emotionnet import export_image  # noqa: E402
from tools.emotionnet.dataset import BUILD_DIR, DEFAULT_CACHE, DEFAULT_DATA_DIR  # noqa: E402
from tools.emotionnet.extract_fer import DEFAULT_OUT as DEFAULT_FER_CACHE  # noqa: E402
from tools.emotionnet.ferplus import (  # noqa: E402
    CLASSES7,
    DEFAULT_FER_DIR,
    hard_labels,
    read_votes,
    soft_targets,
)
from tools.emotionnet.image_data import DEFAULT_OUT as DEFAULT_CROPS  # noqa: E402
from tools.emotionnet.train import class_weights, load_fe, summary  # noqa: E402

CLASSES = list(CLASSES7)
FE_SMOOTHING = 0.1
BATCH = 128
WEIGHT_DECAY = 5e-4
ROTATE_DEG = 10.0
SCALE = 0.1
SHIFT = 0.08  # of the image side
BRIGHT = 0.2  # in normalised units
CONTRAST = 0.2

GRID = (
    {"widths": (16, 32, 64, 128), "convs": (1, 1, 1, 1), "epochs": 8, "lr": 3e-3,
     "power": 0.5, "dropout": 0.3},
    {"widths": (8, 16, 32, 64), "convs": (1, 1, 1, 1), "epochs": 10, "lr": 3e-3,
     "power": 0.5, "dropout": 0.2},
    {"widths": (8, 16, 32, 64), "convs": (1, 1, 1, 1), "epochs": 10, "lr": 3e-3,
     "power": 1.0, "dropout": 0.2},
    {"widths": (16, 32, 64, 128), "convs": (1, 1, 1, 1), "epochs": 10, "lr": 3e-3,
     "power": 1.0, "dropout": 0.3},
    {"widths": (16, 32, 64, 128), "convs": (1, 1, 1, 1), "epochs": 20, "lr": 3e-3,
     "power": 0.75, "dropout": 0.3},
    {"widths": (16, 32, 64, 128), "convs": (1, 1, 1, 1), "epochs": 20, "lr": 3e-3,
     "power": 1.0, "dropout": 0.3},
)  # fmt: skip
FINAL = GRID[4]


def make_net(cfg: dict, k: int):
    import torch.nn as nn

    layers = []
    c_in = 1
    stages = len(cfg["widths"])
    for s, (w, n) in enumerate(zip(cfg["widths"], cfg["convs"])):
        for _ in range(n):
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c_in = w
        if s < stages - 1:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg["dropout"])]
    layers.append(nn.Linear(c_in, k))
    return nn.Sequential(*layers)


def normalise(x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float32) / 255.0 - export_image.MEAN) / export_image.STD)[:, None]


def augment(x, gen):
    """Mirror, similarity transform, brightness / contrast on a [B, 1, H, W] batch."""
    import math

    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(ROTATE_DEG)
    sc = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * SCALE
    tx = (torch.rand(b, generator=gen) * 2 - 1) * SHIFT * 2
    ty = (torch.rand(b, generator=gen) * 2 - 1) * SHIFT * 2
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    ).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    a = 1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * CONTRAST
    c = (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * BRIGHT
    return x * a + c


def train_net(x: np.ndarray, targets: np.ndarray, cfg: dict, seed: int, evals=(), log=print):
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    k = targets.shape[1]
    net = make_net(cfg, k)
    cw = class_weights(targets, cfg["power"])
    sw = torch.tensor(targets @ cw, dtype=torch.float32)
    tt = torch.tensor(targets, dtype=torch.float32)
    xt = torch.from_numpy(np.asarray(x, np.float16))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=WEIGHT_DECAY)
    steps = len(targets) // BATCH
    epochs = cfg["epochs"]
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=epochs * steps, pct_start=0.15
    )
    t0 = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(targets), generator=gen)
        total = 0.0
        for s in range(steps):  # drop the last partial batch (batch norm)
            idx = order[s * BATCH : (s + 1) * BATCH]
            xb = augment(normalise_t(xt[idx]), gen)
            opt.zero_grad()
            logp = torch.log_softmax(net(xb), dim=1)
            loss = -((tt[idx] * logp).sum(dim=1) * sw[idx]).mean()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        msg = f"  epoch {epoch + 1}/{epochs}: loss {total / steps:.4f} ({time.time() - t0:.0f} s)"
        for name, (ex, ey) in evals:
            msg += f"; {name} macro-F1 {summary(ey, predict(net, ex))[1]:.3f}"
        log(msg, flush=True)
    net.eval()
    return net, cw


def normalise_t(x):
    return ((x.float() / 255.0 - export_image.MEAN) / export_image.STD)[:, None]


def predict(net, x: np.ndarray, chunk: int = 512, dtype=np.float16) -> np.ndarray:
    """Probabilities for 56x56 planes ``x`` (cast to ``dtype`` first: float16 as the
    training data is stored, float32 to compare with the ONNX graph)."""
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            xb = normalise_t(torch.from_numpy(np.asarray(x[i : i + chunk], dtype)))
            out.append(torch.softmax(net(xb), dim=1).numpy())
    return np.concatenate(out)  # (train_net sets train mode again at each epoch)


def weights_dict(net, cfg: dict, labels: Sequence[str]) -> Dict[str, np.ndarray]:
    import torch.nn as nn

    out: Dict[str, np.ndarray] = {"labels": np.array(list(labels))}
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
    for i, (c, bn) in enumerate(zip(convs, bns)):
        out[f"conv{i}.weight"] = c.weight.detach().numpy().copy()
        out[f"bn{i}.weight"] = bn.weight.detach().numpy().copy()
        out[f"bn{i}.bias"] = bn.bias.detach().numpy().copy()
        out[f"bn{i}.running_mean"] = bn.running_mean.detach().numpy().copy()
        out[f"bn{i}.running_var"] = bn.running_var.detach().numpy().copy()
    fc = next(m for m in net if isinstance(m, nn.Linear))
    out["fc.weight"] = fc.weight.detach().numpy().copy()
    out["fc.bias"] = fc.bias.detach().numpy().copy()
    out["convs_per_stage"] = np.array(cfg["convs"])
    out["bn_eps"] = np.array(bns[0].eps)
    return out


def load(args):
    """(train x, train targets, {split: (x, y)}, fe split dict)."""
    with np.load(args.crops) as z:
        fer_rows, fer_x = z["fer_rows"], z["fer_x"]
        fe_images, fe_x = [str(n) for n in z["fe_images"]], z["fe_x"]
    votes, usage = read_votes(os.path.join(args.fer, "fer2013new.csv"))
    use = np.array([usage[r] for r in fer_rows])
    targets = soft_targets(votes[fer_rows])
    hard = hard_labels(votes[fer_rows])
    _, fe_t, _, _, split = load_fe(args.fe_cache, args.data, args.seed)
    # load_fe's order: its train and val lists; rebuild them by name
    from tools.emotionnet.dataset import person_split, read_legend
    from tools.emotionnet.train import VAL_FRACTION

    labels, persons, _ = read_legend(os.path.join(args.data, "legend.csv"))
    usable = [n for n in fe_images if labels[n] in CLASSES]
    train, val = person_split(usable, labels, persons, CLASSES, VAL_FRACTION, args.seed)
    assert list(val) == list(split["val"]), "the facial_expressions split differs"
    row = {n: i for i, n in enumerate(fe_images)}
    fe_tr_x = fe_x[[row[n] for n in train]]
    val_sorted = sorted(val)  # compare.py's order
    fe_va_x = fe_x[[row[n] for n in val_sorted]]
    fe_va_y = np.array([CLASSES.index(labels[n]) for n in val_sorted])
    x = np.concatenate([fer_x[use == "Training"], fe_tr_x])
    t = np.concatenate([targets[use == "Training"], fe_t])
    evals = {
        "public": (fer_x[use == "PublicTest"], hard[use == "PublicTest"]),
        "private": (fer_x[use == "PrivateTest"], hard[use == "PrivateTest"]),
        "fe": (fe_va_x, fe_va_y),
    }
    return x, t, evals, split


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crops", default=DEFAULT_CROPS, help="image_data.py output")
    ap.add_argument("--fe-cache", default=DEFAULT_CACHE, help="extract_landmarks.py output")
    ap.add_argument("--fer-cache", default=DEFAULT_FER_CACHE, help="extract_fer.py output")
    ap.add_argument("--data", default=DEFAULT_DATA_DIR, help="facial_expressions folder")
    ap.add_argument("--fer", default=DEFAULT_FER_DIR, help="fer2013 folder")
    ap.add_argument("--out", default=export_image.DEFAULT_OUT, help="ONNX file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--config", type=int, default=None, help="train GRID[N] instead of FINAL")
    ap.add_argument("--build-dir", default=BUILD_DIR)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    x, t, evals, split = load(args)
    split_path = os.path.join(args.build_dir, "split.json")
    if not os.path.exists(split_path):
        os.makedirs(args.build_dir, exist_ok=True)
        with open(split_path, "w", encoding="utf-8") as f:
            json.dump(split, f, indent=1, sort_keys=True)
    print(
        f"train: {len(x)} crops; class mass "
        + ", ".join(f"{c} {m:.0f}" for c, m in zip(CLASSES, t.sum(axis=0))),
        flush=True,
    )
    cfg = FINAL if args.config is None else GRID[args.config]
    print(f"config {cfg}", flush=True)
    net, cw = train_net(x, t, cfg, args.seed, evals=[("PublicTest", evals["public"])])
    print(f"  class weights {dict(zip(CLASSES, np.round(cw, 3).tolist()))}")
    results = {}
    for key, (ex, ey) in evals.items():
        text, f1 = summary(ey, predict(net, ex))
        results[key] = f1
        print(f"  {key}: {text}")
    weights = weights_dict(net, cfg, CLASSES)
    os.makedirs(args.build_dir, exist_ok=True)
    np.savez(os.path.join(args.build_dir, "image_weights.npz"), **weights)
    digest = export_image.write(weights, args.out)
    # ONNX (on float32 112x112 crops, the runtime's input) vs PyTorch (on the 56x56 plane)
    from tools.emotionnet import image_data
    from tools.emotionnet.ferplus import read_votes as _rv

    _, usage = _rv(os.path.join(args.fer, "fer2013new.csv"))
    with np.load(args.fer_cache) as z:
        rows, box = z["rows"], z["box"]
    rows = np.array([r for r in rows if usage[r] == "PrivateTest"][:256])
    crops = image_data.fer_crops(args.fer, rows, box)
    import onnxruntime as ort

    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    onnx_probs = sess.run(None, {"image": crops})[0]
    probs = predict(net, image_data.gray_pool(crops), dtype=np.float32)
    diff = float(np.abs(onnx_probs - probs).max())
    same = int((onnx_probs.argmax(1) == probs.argmax(1)).sum())
    stages, fc = export_image.folded(weights)
    print(f"ONNX vs PyTorch: max abs prob diff {diff:.2e}, same argmax {same}/{len(probs)}")
    print(f"{digest}  {args.out}  ({export_image.macs(stages, fc) / 1e6:.2f} M MACs per face)")
    print(f"done in {time.time() - t0:.0f} s (torch {torch.__version__}, numpy {np.__version__})")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
