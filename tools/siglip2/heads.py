"""LAION's Empathic-Insight-Face heads, read from their repository's file layout.

The heads directory (a clone of laion/Empathic-Insight-Face-Large) holds one PyTorch
state dict per emotion, ``model_<emotion>_best.pth``, of the MLP the model card
describes (1152 -> 1024 -> 512 -> 256 -> 1, ReLU and Dropout(0.2) between, keys
``layers.0``, ``layers.3``, ``layers.6``, ``layers.9``), and a JSON file whose name
starts with ``neutral_stats_cache`` mapping each model key (``model_<emotion>_best``)
to ``{"mean": ...}``: the head's mean raw score on neutral faces.

Everything is read from the files: the emotion names and their order (sorted by file
name), the layer sizes, the neutral means. Needs torch (the ``export`` extra).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

HEAD_GLOB = "model_*_best.pth"
NEUTRAL_GLOB = "neutral_stats_cache*"
LAYER_KEYS = ("layers.0", "layers.3", "layers.6", "layers.9")


class HeadsError(Exception):
    """The heads directory does not hold what LAION's layout promises."""


class MLP(nn.Module):
    """The model card's head, verbatim (the reference the export is checked against)."""

    def __init__(self, input_size: int = 1152, output_size: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(1024, 512),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(256, output_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@dataclass
class Head:
    key: str  # model_<emotion>_best (the neutral-stats key)
    label: str  # <emotion>, as in the file name
    file: Path
    state: Dict[str, torch.Tensor]
    neutral_mean: float


@dataclass
class Heads:
    heads: List[Head]
    neutral_file: Optional[Path]

    @property
    def labels(self) -> List[str]:
        return [h.label for h in self.heads]

    @property
    def input_size(self) -> int:
        return int(self.heads[0].state["layers.0.weight"].shape[1])

    def reference(self, head: Head) -> MLP:
        mlp = MLP(self.input_size)
        mlp.load_state_dict(head.state)
        return mlp.eval()


def _label(path: Path) -> str:
    return path.stem[len("model_") : -len("_best")]


def _load_state(path: Path) -> Dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise HeadsError(f"{path}: not a readable PyTorch state dict ({exc})") from None
    if not isinstance(state, dict):
        raise HeadsError(f"{path}: expected a state dict, got {type(state).__name__}")
    want = {f"{k}.{p}" for k in LAYER_KEYS for p in ("weight", "bias")}
    if set(state) != want:
        raise HeadsError(
            f"{path}: not the model card's MLP (keys {sorted(state)}, expected {sorted(want)})"
        )
    return {k: v.detach().float() for k, v in state.items()}


def read_neutral(directory: Path) -> Optional[Path]:
    found = sorted(p for p in directory.glob(NEUTRAL_GLOB) if p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise HeadsError(f"{directory}: several neutral-stats files ({names}); keep one")
    return found[0] if found else None


def load_heads(directory: Path, allow_missing_neutral: bool = False) -> Heads:
    """Read every head and its neutral mean (raises HeadsError with what is wrong)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise HeadsError(f"{directory}: not a directory")
    files = sorted(directory.glob(HEAD_GLOB))
    if not files:
        raise HeadsError(
            f"{directory}: no {HEAD_GLOB} files (clone laion/Empathic-Insight-Face-Large there)"
        )
    neutral_file = read_neutral(directory)
    stats: Dict[str, object] = {}
    if neutral_file is None:
        if not allow_missing_neutral:
            raise HeadsError(
                f"{directory}: no {NEUTRAL_GLOB} file: the neutral means are part of the "
                "model (pass --allow-missing-neutral to subtract 0.0, as the card's example does)"
            )
    else:
        try:
            stats = json.loads(neutral_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise HeadsError(f"{neutral_file}: not JSON ({exc})") from None
        if not isinstance(stats, dict):
            raise HeadsError(f"{neutral_file}: expected an object of model keys")
    heads: List[Head] = []
    missing: List[str] = []
    for path in files:
        key = path.stem
        state = _load_state(path)
        entry = stats.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float)):
            mean = float(entry["mean"])  # type: ignore[arg-type]
        else:
            missing.append(key)
            mean = 0.0
        heads.append(Head(key, _label(path), path, state, mean))
    if missing and neutral_file is not None and not allow_missing_neutral:
        raise HeadsError(f"{neutral_file}: no mean for {', '.join(missing)}")
    shapes = {tuple(tuple(v.shape) for v in h.state.values()) for h in heads}
    if len(shapes) != 1:
        raise HeadsError(f"{directory}: the heads do not all have the same layer sizes")
    return Heads(heads, neutral_file)


class FusedHeads(nn.Module):
    """All heads as one computation: the first layers stacked into one
    [in, heads x 1024] GEMM, then one batched matmul per further layer (no per-head
    subgraphs), minus the neutral means -> scores [N, heads]."""

    def __init__(self, heads: Heads) -> None:
        super().__init__()
        states = [h.state for h in heads.heads]
        k = len(states)

        def stack(name: str) -> torch.Tensor:
            return torch.stack([s[name] for s in states])

        w1 = stack("layers.0.weight")  # [k, h1, in]
        self.h1 = int(w1.shape[1])
        self.count = k
        self.w1 = nn.Parameter(w1.reshape(k * self.h1, -1).t().contiguous(), requires_grad=False)
        self.b1 = nn.Parameter(stack("layers.0.bias").reshape(-1), requires_grad=False)
        # per-head weights as [k, in, out] for x[k, N, in] @ w -> [k, N, out]
        self.w2 = nn.Parameter(stack("layers.3.weight").transpose(1, 2).contiguous(), False)
        self.b2 = nn.Parameter(stack("layers.3.bias").unsqueeze(1), requires_grad=False)
        self.w3 = nn.Parameter(stack("layers.6.weight").transpose(1, 2).contiguous(), False)
        self.b3 = nn.Parameter(stack("layers.6.bias").unsqueeze(1), requires_grad=False)
        self.w4 = nn.Parameter(stack("layers.9.weight").transpose(1, 2).contiguous(), False)
        neutral = torch.tensor([h.neutral_mean for h in heads.heads], dtype=torch.float32)
        # the last bias and the neutral mean fold into one constant per head
        self.offset = nn.Parameter(
            (stack("layers.9.bias").reshape(-1) - neutral).reshape(1, k), False
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        n = embedding.shape[0]
        x = torch.relu(embedding @ self.w1 + self.b1)  # [N, k*h1]
        x = x.reshape(n, self.count, self.h1).transpose(0, 1)  # [k, N, h1]
        x = torch.relu(torch.matmul(x, self.w2) + self.b2)  # [k, N, h2]
        x = torch.relu(torch.matmul(x, self.w3) + self.b3)  # [k, N, h3]
        x = torch.matmul(x, self.w4)  # [k, N, 1]
        return x.reshape(self.count, n).transpose(0, 1) + self.offset  # [N, k]
