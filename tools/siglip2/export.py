#!/usr/bin/env python3
"""SigLIP2 + LAION's 40 emotion heads -> ONE ONNX model and its manifest entry.

    python -m tools.siglip2.export --siglip DIR --heads DIR --out DIR
        [--name siglip2_emotion_heads] [--opset 14] [--images DIR]
        [--license TEXT] [--source TEXT] [--atol 1e-3]

Workstation side only (torch + transformers: ``pip install 'emotion-agent[export]'``);
nothing here runs on the device. ``--siglip`` is a local clone of a fixed-resolution
SigLIP / SigLIP2 checkpoint (google/siglip2-so400m-patch16-384: ``model_type``
``siglip``), ``--heads`` a local clone of laion/Empathic-Insight-Face-Large
(tools/siglip2/heads.py reads its layout). Nothing is downloaded.

The graph (``image`` float32 [N, S, S, 3] -> ``scores`` float32 [N, heads]):

    raw BGR pixels 0..255, NHWC (what the agent's crops are)
      -> NCHW; BGR->RGB and the processor's (x / 255 - mean) / std folded into the
         patch-embedding convolution (exact: it is linear)
      -> SigLIP vision tower (eager attention, GELU-tanh, LayerNorm) -> pooled embedding
      -> L2 normalisation
      -> all heads fused: one [D, heads x 1024] GEMM, then batched matmuls per layer
      -> minus each head's neutral mean -> scores

It writes ``<name>.onnx``, ``manifest.yaml`` (one ``task: secondary`` entry: labels in
output order, sha256, input size; licence and source to fill in) and
``export-report.json`` (the verification figures), and checks the ONNX output against
the reference PyTorch computation (the model card's: the checkpoint's image features,
normalised, then each head separately, minus its neutral mean) in FP32, and reports
the FP16 difference (the graph converted to FP16, run by ONNX Runtime), since
TensorRT builds it FP16. It exits 1 when FP32 differs by more than ``--atol``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from engines.digest import file_sha256  # noqa: E402
from tools.siglip2.heads import FusedHeads, Heads, HeadsError, load_heads  # noqa: E402

DEFAULT_NAME = "siglip2_emotion_heads"
# Opset 14: TensorRT 8.5 (JetPack 5.1) parses it; LayerNorm is decomposed into
# ReduceMean / Sub / Pow / Sqrt / Div. Opset 17 writes ONNX LayerNormalization, which
# only TensorRT 8.6+ (JetPack 6) parses, into its normalisation layer (better FP16
# accuracy). Opset 13 for TensorRT 8.2 (JetPack 4.6). docs/models.md.
DEFAULT_OPSET = 14
FILL_IN = "FILL IN"
# Every op the export may contain; all are in the ONNX-TensorRT support matrix of
# TensorRT 8.2 and later, except LayerNormalization (opset 17 only: TensorRT 8.6+).
# An op outside it fails the export.
TENSORRT_OPS = frozenset(
    {
        *("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Tanh", "Erf", "Relu", "Softmax"),
        *("MatMul", "Gemm", "Conv", "LayerNormalization", "ReduceMean", "ReduceSum"),
        *("ReduceL2", "Transpose", "Reshape", "Flatten", "Concat", "Gather", "Unsqueeze"),
        *("Squeeze", "Shape", "Slice", "Split", "Expand", "Constant", "ConstantOfShape"),
        *("Cast", "Where", "Equal", "Clip", "Max", "Min", "Range", "Identity"),
    }
)


class ExportError(Exception):
    """The inputs cannot be exported; the message says why."""


@dataclass(frozen=True)
class Preprocess:
    """The checkpoint's image processor: square size, per-channel mean and std (RGB)."""

    size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


def read_preprocess(siglip_dir: Path, image_size: int) -> Preprocess:
    path = siglip_dir / "preprocessor_config.json"
    mean, std, size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), image_size
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        mean = tuple(float(v) for v in data.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(float(v) for v in data.get("image_std", std))  # type: ignore[assignment]
        if abs(float(data.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
            raise ExportError(f"{path}: rescale_factor other than 1/255 is not supported")
        if data.get("do_normalize") is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        dims = data.get("size") or {}
        if isinstance(dims, dict) and "height" in dims:
            if dims["height"] != dims.get("width"):
                raise ExportError(f"{path}: a non-square input size is not supported")
            size = int(dims["height"])
    if size != image_size:
        raise ExportError(
            f"{path}: the processor resizes to {size} but the vision tower takes {image_size}"
        )
    return Preprocess(size, mean, std)  # type: ignore[arg-type]


def load_siglip(siglip_dir: Path) -> Tuple[nn.Module, nn.Module, Preprocess]:
    """(vision model for the export, reference model with ``get_image_features``, processor)."""
    import transformers
    from transformers import AutoConfig, AutoModel, SiglipVisionModel

    transformers.logging.set_verbosity_error()  # the text tower's keys are "unexpected"
    if not (siglip_dir / "config.json").exists():
        raise ExportError(f"{siglip_dir}: no config.json (clone the checkpoint's repository)")
    config = AutoConfig.from_pretrained(str(siglip_dir))
    kind = getattr(config, "model_type", "?")
    if kind not in ("siglip", "siglip_vision_model"):
        raise ExportError(
            f"{siglip_dir}: model_type {kind!r} is not supported: use a fixed-resolution "
            "SigLIP/SigLIP2 checkpoint such as google/siglip2-so400m-patch16-384 "
            "(model_type 'siglip'); NaFlex checkpoints ('siglip2') are not"
        )
    vision, info = SiglipVisionModel.from_pretrained(
        str(siglip_dir), attn_implementation="eager", output_loading_info=True
    )
    if info.get("missing_keys") or info.get("mismatched_keys"):
        missing = sorted(info.get("missing_keys") or []) + [
            str(k) for k in info.get("mismatched_keys") or []
        ]
        raise ExportError(f"{siglip_dir}: vision weights missing or mismatched: {missing[:5]}")
    vision.eval()
    reference = vision
    if kind == "siglip":  # the full model: the card's get_image_features path
        reference = AutoModel.from_pretrained(str(siglip_dir), attn_implementation="eager").eval()
    vcfg = vision.config
    if not getattr(vcfg, "vision_use_head", True):
        raise ExportError(f"{siglip_dir}: the vision tower has no pooling head")
    return vision, reference, read_preprocess(siglip_dir, int(vcfg.image_size))


def reference_embedding(reference: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if hasattr(reference, "get_image_features"):
            out: Any = reference.get_image_features(pixel_values=pixel_values)
        else:
            out = reference(pixel_values=pixel_values)
    if not isinstance(out, torch.Tensor):  # newer transformers return a model output
        out = out.pooler_output
    return out


class AttentionPooling(nn.Module):
    """SigLIP's pooling head (one learned probe attending over the tokens) as plain
    MatMul / Softmax: the probe's query is a constant, so each head's attention logits
    are one [D, heads] matmul of the tokens. Exported through torch.nn.MultiheadAttention
    the same head becomes Tile / Mod / dynamic-shape ops; this form is what TensorRT
    fuses best. Equal to the original (the export's verification checks it)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        attention = head.attention
        d, h = int(attention.embed_dim), int(attention.num_heads)
        dh = d // h
        self.heads, self.head_dim = h, dh
        with torch.no_grad():
            wq, wk, wv = attention.in_proj_weight.detach().float().chunk(3)
            bq, bk, bv = attention.in_proj_bias.detach().float().chunk(3)
            q = (head.probe.detach().float().reshape(1, d) @ wq.t() + bq).reshape(h, dh)
            q = q / math.sqrt(dh)
            # logits[n, t, j] = (x[n, t] @ wk.T + bk)[j-th head] . q[j]
            a = torch.einsum("jkd,jk->dj", wk.reshape(h, dh, d), q)  # [d, h]
            c = (bk.reshape(h, dh) * q).sum(-1)  # [h]
        self.a = nn.Parameter(a.contiguous(), requires_grad=False)
        self.c = nn.Parameter(c, requires_grad=False)
        self.wv = nn.Parameter(wv.t().contiguous(), requires_grad=False)
        self.bv = nn.Parameter(bv, requires_grad=False)
        self.out_proj = attention.out_proj
        self.layernorm = head.layernorm
        self.mlp = head.mlp

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t = tokens.shape[0], tokens.shape[1]
        weights = torch.softmax(tokens @ self.a + self.c, dim=1)  # [N, T, h]
        values = (tokens @ self.wv + self.bv).reshape(n, t, self.heads, self.head_dim)
        pooled = torch.matmul(weights.permute(0, 2, 1).unsqueeze(2), values.transpose(1, 2))
        x = self.out_proj(pooled.reshape(n, self.heads * self.head_dim))  # [N, D]
        return x + self.mlp(self.layernorm(x))


class FaceEmotionGraph(nn.Module):
    """What is exported: raw BGR NHWC pixels -> scores (see the module doc)."""

    def __init__(self, vision: nn.Module, heads: FusedHeads, pre: Preprocess) -> None:
        super().__init__()
        self.vision = copy.deepcopy(vision)
        tower = getattr(self.vision, "vision_model", self.vision)  # transformers 4 / 5
        conv = tower.embeddings.patch_embedding
        mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)
        with torch.no_grad():
            weight = conv.weight.detach().float()  # [D, 3 (RGB), p, p]
            bias = conv.bias.detach().float()
            conv.bias.copy_(bias - (weight * (mean / std)).sum(dim=(1, 2, 3)))
            conv.weight.copy_((weight / (255.0 * std)).flip(1))  # input channels BGR
        tower.head = AttentionPooling(tower.head)
        self.heads = heads

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.permute(0, 3, 1, 2)
        pooled = self.vision(pixel_values=pixels).pooler_output
        norm = torch.sqrt((pooled * pooled).sum(dim=-1, keepdim=True)).clamp_min(1e-12)
        return self.heads(pooled / norm)


def reference_scores(
    reference: nn.Module, heads: Heads, pre: Preprocess, images_bgr: np.ndarray
) -> np.ndarray:
    """The model card's computation: processor normalisation, image features,
    numpy L2 normalisation, every head on its own, minus its neutral mean."""
    rgb = images_bgr[..., ::-1].astype(np.float32) / 255.0
    pixels = (rgb - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    pixel_values = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    features = reference_embedding(reference, pixel_values).numpy()
    norms = np.linalg.norm(features, 2, axis=-1, keepdims=True)
    norms[norms == 0] = 1
    embedding = torch.from_numpy((features / norms).astype(np.float32))
    out = np.zeros((len(images_bgr), len(heads.heads)), np.float64)
    with torch.no_grad():
        for j, head in enumerate(heads.heads):
            raw = heads.reference(head)(embedding).numpy().reshape(-1)
            out[:, j] = raw - head.neutral_mean
    return out


def test_images(size: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """Deterministic BGR uint8 test images: smooth gradients plus noise (not faces)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    images = []
    for _ in range(count):
        a, b, c = rng.uniform(0, 255, 3)
        base = np.stack([a * xx, b * yy, c * (1 - xx * yy)], axis=-1)
        noise = rng.normal(0, 20, (size, size, 3))
        images.append(np.clip(base + noise, 0, 255))
    return np.stack(images).astype(np.uint8)


def read_images(directory: Path, size: int) -> np.ndarray:
    import cv2  # the agent's cpu extra

    out = []
    for path in sorted(directory.iterdir()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            out.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
    if not out:
        raise ExportError(f"{directory}: no readable images")
    return np.stack(out)


def export_onnx(graph: FaceEmotionGraph, size: int, path: Path, opset: int) -> None:
    dummy = torch.zeros(1, size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False), on purpose: it needs no onnxscript, and
    # its graph is plain ops for TensorRT; it warns that it is deprecated.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(path.name + ".")]
    if leftovers:
        raise ExportError(
            f"the export wrote external weight files ({', '.join(leftovers)}): the model is "
            "over protobuf's 2 GiB limit; the manifest needs one self-contained file"
        )


def drop_identity_casts(path: Path) -> int:
    """Remove Cast nodes whose input already has the target type (the attention's
    softmax-in-FP32-then-back casts of an FP32 model): no-ops in FP32 that would pin
    those tensors to FP32 when the graph is converted to FP16. Returns how many."""
    import onnx

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    outputs = {o.name for o in model.graph.output}
    rename: Dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        source = node.input[0] if node.input else ""
        if (
            node.op_type == "Cast"
            and to is not None
            and types.get(source) == to
            and node.output[0] not in outputs
        ):
            rename[node.output[0]] = source
            continue
        keep.append(node)
    dropped = len(model.graph.node) - len(keep)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return dropped


def op_counts(path: Path) -> Dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["scores"], {"image": images.astype(np.float32)})[0])


def fp16_difference(path: Path, images: np.ndarray, reference: np.ndarray) -> Dict[str, Any]:
    """Convert the graph to FP16 (inputs and outputs stay FP32) and run it with ONNX
    Runtime; the closest CPU stand-in for TensorRT's FP16 build."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        return {"ran": False, "why": f"onnxconverter-common is not installed ({exc})"}
    with warnings.catch_warnings():  # "truncated to 1e-07" for every tiny constant
        warnings.simplefilter("ignore")
        model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    half = path.with_name(path.stem + ".fp16-check.onnx")
    try:
        onnx.save(model, str(half))
        out = run_onnx(half, images)
    except Exception as exc:  # an op without an FP16 CPU kernel
        return {"ran": False, "why": f"ONNX Runtime could not run the FP16 graph: {exc}"}
    finally:
        if half.exists():
            half.unlink()
    diff = np.abs(out.astype(np.float64) - reference)
    return {
        "ran": True,
        "how": "graph converted with onnxconverter-common float16 (keep_io_types), "
        "ONNX Runtime CPU",
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float(np.mean(out.argmax(1) == reference.argmax(1))),
    }


def manifest_entry(
    name: str, onnx_path: Path, size: int, labels: Sequence[str], license: str, source: str
) -> Dict[str, Any]:
    return {
        "task": "secondary",
        "file": onnx_path.name,
        "sha256": file_sha256(onnx_path),
        "inputs": [{"name": "image", "shape": ["N", size, size, 3], "dtype": "float32"}],
        "outputs": [{"name": "scores", "shape": ["N", len(labels)], "dtype": "float32"}],
        "preprocessing": {
            "kind": "image",
            "layout": "NHWC",
            "color": "BGR",
            "width": size,
            "height": size,
            "value_range": "0..255",
            "square_pad": "center",
        },
        "postprocessing": {"kind": "classifier", "activation": "none"},
        "labels": list(labels),
        "max_batch": 1,
        "license": license,
        "source": source,
        "description": f"SigLIP vision tower + {len(labels)} fused emotion heads "
        "(intensities: raw score minus the neutral mean), tools/siglip2/export.py",
    }


def write_manifest(path: Path, name: str, entry: Dict[str, Any]) -> None:
    import yaml

    text = (
        "# Written by tools/siglip2/export.py. Fill in `license` (both repositories'\n"
        "# licences) and `source` (their revisions), copy this folder to the device and\n"
        "# set pipeline.secondary.manifest to this file (docs/models.md).\n"
        + yaml.safe_dump(
            {"schema_version": 1, "models": {name: entry}},
            sort_keys=False,
            allow_unicode=True,
            width=100,
        )
    )
    path.write_text(text, encoding="utf-8")


def parameter_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def export(
    siglip_dir: Path,
    heads_dir: Path,
    out_dir: Path,
    *,
    name: str = DEFAULT_NAME,
    opset: int = DEFAULT_OPSET,
    images_dir: Optional[Path] = None,
    license: str = "",
    source: str = "",
    atol: float = 1e-3,
    allow_missing_neutral: bool = False,
    fp16_check: bool = True,
    log=print,
) -> Dict[str, Any]:
    """Export, verify, write the manifest; return the report (raises ExportError)."""
    torch.manual_seed(0)
    try:
        heads = load_heads(heads_dir, allow_missing_neutral)
    except HeadsError as exc:
        raise ExportError(str(exc)) from None
    vision, reference, pre = load_siglip(siglip_dir)
    width = int(vision.config.hidden_size)
    if heads.input_size != width:
        raise ExportError(
            f"the heads take {heads.input_size}-d embeddings but {siglip_dir} makes {width}-d "
            "ones (Empathic-Insight-Face-Large needs google/siglip2-so400m-patch16-384)"
        )
    log(
        f"heads: {len(heads.heads)} from {heads_dir} (neutral means: "
        f"{heads.neutral_file.name if heads.neutral_file else 'none, 0.0'}); "
        f"vision: {siglip_dir} ({width}-d, {pre.size}x{pre.size})"
    )
    graph = FaceEmotionGraph(vision, FusedHeads(heads), pre).eval()
    onnx_path = Path(out_dir) / f"{name}.onnx"
    log(f"exporting {onnx_path} (opset {opset}) ...")
    export_onnx(graph, pre.size, onnx_path, opset)
    drop_identity_casts(onnx_path)
    ops = op_counts(onnx_path)
    unsupported = sorted(set(ops) - TENSORRT_OPS)
    if unsupported:
        raise ExportError(f"ops outside TensorRT's ONNX support: {', '.join(unsupported)}")

    images = test_images(pre.size)
    if images_dir is not None:
        images = np.concatenate([images, read_images(images_dir, pre.size)])
    expected = reference_scores(reference, heads, pre, images)
    got = run_onnx(onnx_path, images).astype(np.float64)
    diff = np.abs(got - expected)
    fp32 = {
        "images": len(images),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "atol": atol,
        "passed": bool(diff.max() <= atol),
        "score_range": [float(expected.min()), float(expected.max())],
    }
    fp16 = (
        fp16_difference(onnx_path, images, expected)
        if fp16_check
        else {"ran": False, "why": "skipped (--skip-fp16)"}
    )
    entry = manifest_entry(
        name,
        onnx_path,
        pre.size,
        heads.labels,
        license or f"{FILL_IN}: the licences of {siglip_dir.name} and {heads_dir.name}",
        source or f"{FILL_IN}: {siglip_dir.name} and {heads_dir.name} (revisions)",
    )
    write_manifest(Path(out_dir) / "manifest.yaml", name, entry)
    report = {
        "model": name,
        "file": onnx_path.name,
        "sha256": entry["sha256"],
        "bytes": onnx_path.stat().st_size,
        "parameters": parameter_count(graph),
        "input_size": pre.size,
        "labels": heads.labels,
        "opset": opset,
        "ops": ops,
        "fp32": fp32,
        "fp16": fp16,
    }
    (Path(out_dir) / "export-report.json").write_text(
        json.dumps(report, indent=2) + "\n", encoding="utf-8"
    )
    log(
        f"FP32 vs the PyTorch reference: max |diff| {fp32['max_abs_diff']:.2e} over "
        f"{fp32['images']} images ({'ok' if fp32['passed'] else 'ABOVE'} atol {atol:g})"
    )
    if fp16.get("ran"):
        log(
            f"FP16 (ONNX Runtime): max |diff| {fp16['max_abs_diff']:.2e}, "
            f"top-1 agreement {fp16['top1_agreement']:.0%}"
        )
    else:
        log(f"FP16 check not run: {fp16['why']}")
    log(f"wrote {onnx_path} ({report['bytes']} bytes), manifest.yaml, export-report.json")
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.siglip2.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--siglip", type=Path, required=True, help="local SigLIP2 checkpoint")
    parser.add_argument("--heads", type=Path, required=True, help="local heads repository")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--name", default=DEFAULT_NAME, help="manifest name of the model")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, choices=(13, 14, 17))
    parser.add_argument("--images", type=Path, help="face crops to verify on, besides the")
    parser.add_argument("--license", default="", help="manifest licence text")
    parser.add_argument("--source", default="", help="manifest source text")
    parser.add_argument("--atol", type=float, default=1e-3, help="FP32 tolerance")
    parser.add_argument("--allow-missing-neutral", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = export(
            args.siglip,
            args.heads,
            args.out,
            name=args.name,
            opset=args.opset,
            images_dir=args.images,
            license=args.license,
            source=args.source,
            atol=args.atol,
            allow_missing_neutral=args.allow_missing_neutral,
        )
    except (ExportError, OSError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    return 0 if report["fp32"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
