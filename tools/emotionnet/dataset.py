"""The facial_expressions data set as EmotionNet training sees it (numpy only, no torch).

Shared by extract_landmarks.py, train.py and evaluate.py, and unit-tested without the
data (tests/test_emotionnet.py):

- :func:`read_legend`: ``legend.csv`` -> {image: label}, labels lower-cased, exact
  duplicate rows merged, images with conflicting labels dropped;
- :func:`person_of`: the identity an image shows, the unit of the train/validation split;
- :func:`person_split`: a seeded, class-stratified, person-disjoint split;
- :data:`FLIP_68`: the iBUG-68 left/right index map for horizontal-flip augmentation.

Data: ``../shared/data/facial_expressions`` (muxspace/facial_expressions, Apache-2.0).
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_DATA_DIR = os.path.abspath(
    os.path.join(REPO_ROOT, "..", "shared", "data", "facial_expressions")
)
BUILD_DIR = os.path.join(REPO_ROOT, "build", "emotionnet")
DEFAULT_CACHE = os.path.join(BUILD_DIR, "landmarks.npz")
# every label of legend.csv (lower-cased), most frequent first
LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")

# LFW: First_Last_0001.jpg (a name of one or more parts, then a 4-digit index)
_LFW = re.compile(r"^(?P<person>.+)_(?P<index>\d{4})\.jpe?g$", re.IGNORECASE)
# film stills (annotator "jhamski"): ActorName_12.jpg, one actor per name
_FILM = re.compile(r"^(?P<person>[A-Za-z]+)_(?P<index>\d{1,3})\.jpe?g$", re.IGNORECASE)


def person_of(image: str, user_id: str = "") -> str:
    """The person an image shows: the key of the person-disjoint split.

    - LFW news photos ``Aaron_Eckhart_0001.jpg`` -> ``lfw:Aaron_Eckhart`` (LFW names one
      person per name; the same name annotated by different users is the same person).
    - Film stills ``HrithikRoshan_117.jpg`` -> ``film:HrithikRoshan`` (one actor per name).
    - Anything else (``facial-expressions_2868588k.jpg``, user 628: no name given) ->
      ``user:<user.id>``: all unnamed images of one annotator form one group, the
      conservative choice when the identity is unknown.
    """
    base = os.path.basename(image)
    m = _LFW.match(base)
    if m:
        return "lfw:" + m.group("person")
    m = _FILM.match(base)
    if m:
        return "film:" + m.group("person")
    return "user:" + (user_id or "unknown")


def read_legend(path: str) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, int]]:
    """legend.csv -> ({image: label}, {image: person}, stats).

    Labels are lower-cased. An image listed twice with the same label is kept once; one
    listed with different labels (annotators disagree) is dropped.
    """
    labels: Dict[str, set] = defaultdict(set)
    users: Dict[str, str] = {}
    rows = 0
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows += 1
            image = row["image"].strip()
            labels[image].add(row["emotion"].strip().lower())
            users.setdefault(image, row["user.id"].strip())
    out = {img: next(iter(lbls)) for img, lbls in labels.items() if len(lbls) == 1}
    persons = {img: person_of(img, users[img]) for img in out}
    stats = {
        "rows": rows,
        "images": len(labels),
        "duplicate_rows": rows - len(labels),
        "conflicting_images_dropped": len(labels) - len(out),
    }
    return out, persons, stats


def class_counts(images: Iterable[str], labels: Mapping[str, str]) -> Counter:
    return Counter(labels[i] for i in images)


def person_split(
    images: Sequence[str],
    labels: Mapping[str, str],
    persons: Mapping[str, str],
    classes: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    trials: int = 4000,
) -> Tuple[List[str], List[str]]:
    """A person-disjoint (train, val) split, stratified by class as well as persons allow.

    Every person goes wholly to one side. Among ``trials`` seeded random orders of the
    persons, each filled into validation until it holds ``val_fraction`` of the images,
    the one whose per-class validation share is closest to ``val_fraction`` (squared
    error summed over ``classes``) wins. Deterministic for a given input and seed.
    Only images whose label is in ``classes`` are returned.
    """
    keep = sorted(i for i in images if labels[i] in classes)
    by_person: Dict[str, List[str]] = defaultdict(list)
    for i in keep:
        by_person[persons[i]].append(i)
    names = sorted(by_person)
    cidx = {c: k for k, c in enumerate(classes)}
    counts = np.zeros((len(names), len(classes)), dtype=np.int64)
    for p, name in enumerate(names):
        for i in by_person[name]:
            counts[p, cidx[labels[i]]] += 1
    totals = counts.sum(axis=0).astype(np.float64)
    sizes = counts.sum(axis=1)
    target = val_fraction * sizes.sum()
    rng = np.random.default_rng(seed)
    best_cost, best_val = None, None
    for _ in range(trials):
        order = rng.permutation(len(names))
        cum = np.cumsum(sizes[order])
        n_val = int(np.searchsorted(cum, target)) + 1
        val_mask = np.zeros(len(names), dtype=bool)
        val_mask[order[:n_val]] = True
        share = counts[val_mask].sum(axis=0) / np.maximum(totals, 1.0)
        cost = float(((share - val_fraction) ** 2).sum())
        if best_cost is None or cost < best_cost:
            best_cost, best_val = cost, val_mask
    assert best_val is not None
    val_persons = {names[p] for p in np.nonzero(best_val)[0]}
    train = [i for i in keep if persons[i] not in val_persons]
    val = [i for i in keep if persons[i] in val_persons]
    return train, val


# iBUG-68 horizontal flip: the subject's right and left swap. FLIP_68[i] is the index
# whose mirrored point becomes point i.
def _flip_map() -> Tuple[int, ...]:
    pairs = []
    pairs += [(i, 16 - i) for i in range(8)]  # jaw 0..16 (8 is the chin)
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows 17..21 <-> 26..22
    pairs += [(31, 35), (32, 34)]  # nostrils (27..30 nose bridge, 33 tip stay)
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lip (51, 57 stay)
    pairs += [(60, 64), (61, 63), (67, 65)]  # inner lip (62, 66 stay)
    m = list(range(68))
    for a, b in pairs:
        m[a], m[b] = b, a
    return tuple(m)


FLIP_68 = _flip_map()


def flip_landmarks(points: np.ndarray) -> np.ndarray:
    """Mirror [N, 68, 2] landmarks horizontally (x -> -x) and swap left/right indices."""
    pts = np.asarray(points)
    out = pts[:, FLIP_68, :].copy()
    out[..., 0] = -out[..., 0]
    return out
