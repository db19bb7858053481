"""FER2013 with Microsoft's FER+ votes, as EmotionNet v2 training sees it (numpy only).

Data: ``../shared/data/fer2013`` (read its README): ``fer2013.npz`` (48x48 gray faces,
``usage`` Training / PublicTest / PrivateTest / Excluded) and ``fer2013new.csv`` (FER+
votes of 10 annotators per image, same row order). The images are third-party web
images without a licence: train and evaluate on them, never ship them.

- :func:`read_votes`: the FER+ vote matrix [N, 10] (8 emotions, unknown, not-a-face);
- :func:`soft_targets`: votes -> a distribution over our seven classes (contempt votes
  dropped), the training target;
- :func:`usable_rows`: which rows count: not ``Excluded``, not mostly unknown / not a
  face, at least one vote for one of the seven classes;
- :func:`hard_labels`: the majority label for evaluation, -1 where the top vote is tied.
"""

from __future__ import annotations

import csv
import os
from typing import List, Sequence, Tuple

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_FER_DIR = os.path.abspath(os.path.join(REPO_ROOT, "..", "shared", "data", "fer2013"))
# the columns of fer2013new.csv after Usage and Image name
VOTE_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
# the seven basic expressions, in the order EmotionNet v2 outputs them
CLASSES7 = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear")
SPLITS = ("Training", "PublicTest", "PrivateTest")


def read_votes(path: str) -> Tuple[np.ndarray, List[str]]:
    """fer2013new.csv -> (votes [N, 10] int, usage per row). Empty rows count as zeros."""
    votes, usage = [], []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            votes.append([int(row[c] or 0) for c in VOTE_COLUMNS])
            usage.append(row["Usage"].strip())
    return np.asarray(votes, dtype=np.int64), usage


def class_votes(votes: np.ndarray, classes: Sequence[str] = CLASSES7) -> np.ndarray:
    """The vote columns of ``classes``, in that order: [N, len(classes)]."""
    return votes[:, [VOTE_COLUMNS.index(c) for c in classes]]


def usable_rows(votes: np.ndarray, usage: Sequence[str]) -> np.ndarray:
    """Boolean mask: rows to use. Dropped: ``Excluded`` (lab images, not web faces),
    rows where unknown + not-a-face hold half the votes or more, rows with no vote for
    any of the seven classes (contempt only)."""
    other = votes[:, VOTE_COLUMNS.index("unknown")] + votes[:, VOTE_COLUMNS.index("NF")]
    total = votes.sum(axis=1)
    seven = class_votes(votes).sum(axis=1)
    excluded = np.array([u not in SPLITS for u in usage])
    return ~excluded & (2 * other < total) & (seven > 0)


def soft_targets(votes: np.ndarray, classes: Sequence[str] = CLASSES7) -> np.ndarray:
    """Votes -> probability targets over ``classes`` (votes for other columns dropped)."""
    v = class_votes(votes, classes).astype(np.float64)
    s = v.sum(axis=1, keepdims=True)
    return np.divide(v, s, out=np.zeros_like(v), where=s > 0)


def hard_labels(votes: np.ndarray, classes: Sequence[str] = CLASSES7) -> np.ndarray:
    """The majority class index per row, -1 where the top vote count is tied (or none)."""
    v = class_votes(votes, classes)
    top = v.max(axis=1)
    ties = (v == top[:, None]).sum(axis=1) > 1
    out = v.argmax(axis=1)
    out[ties | (top == 0)] = -1
    return out


def load_pixels(data_dir: str = DEFAULT_FER_DIR) -> Tuple[np.ndarray, np.ndarray]:
    """(pixels [N, 48, 48] uint8, usage [N] str) from fer2013.npz."""
    with np.load(os.path.join(data_dir, "fer2013.npz")) as z:
        return z["pixels"], z["usage"]
