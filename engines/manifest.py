"""The model manifest: one YAML file that describes every model the agent can run.

Each entry names the file, its sha256, its input and output tensors, how inputs
are prepared, how outputs are read, class labels, licence and source. The
bundled manifest (``engines/models/manifest.yaml``) lists the models that ship
with the agent; a user points ``models.manifest`` at their own file to run, for
example, NVIDIA's TAO EmotionNet (docs/models.md shows how).

A model whose file does not match its sha256 is refused with a clear error
(:class:`ModelIntegrityError`), never loaded.

This module depends on nothing in ``agent``.
"""

from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engines.digest import file_sha256

BUNDLED_DIR = Path(__file__).resolve().parent / "models"
BUNDLED_MANIFEST = BUNDLED_DIR / "manifest.yaml"

Task = Literal["face_detector", "face_landmarks", "emotion", "secondary"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output tensor. Dimensions are sizes or names (dynamic, e.g. "N")."""

    name: str = Field(min_length=1)
    shape: List[Union[int, str]] = Field(min_length=1)
    dtype: Literal["float32", "float16", "int32", "int64"] = "float32"

    @property
    def batch_dynamic(self) -> bool:
        return isinstance(self.shape[0], str)


class ImageInput(_Strict):
    """An image tensor. The bundled graphs take raw camera pixels (normalisation folded in).

    The agent prepares what the graph does not do itself: padding (``square_pad``;
    ``none`` stretches to width x height), resizing, channel order (GRAY: one
    channel, ITU-R 601 luma), layout and the value range (``0..1``: divided by 255).
    """

    kind: Literal["image"] = "image"
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    color: Literal["BGR", "RGB", "GRAY"] = "BGR"
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    value_range: Literal["0..255", "0..1"] = "0..255"
    square_pad: Literal["bottom_right", "center", "none"] = Field(
        "bottom_right", description="How a frame or crop is padded to a square before resizing."
    )

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3


LandmarkNormalization = Literal["centered_aligned_rms", "crop_unit", "pixels"]


class LandmarksInput(_Strict):
    """68 (x, y) landmarks flattened to 136 values.

    ``normalization`` names the contract (agent/perception/landmarks.py implements each):
    ``centered_aligned_rms``: centroid at 0, eyes level, RMS radius 1 (ours);
    ``crop_unit``: 0..1 relative to the face crop; ``pixels``: image pixels.
    """

    kind: Literal["landmarks68"] = "landmarks68"
    normalization: LandmarkNormalization
    order: Literal["xyxy", "xxyy"] = Field(
        "xyxy", description="x0,y0,x1,y1,... (xyxy) or x0..x67,y0..y67 (xxyy)."
    )


class TinyYoloDecoding(_Strict):
    """face-api.js tiny face detector output: a [N, rows, cols, anchors*5] grid."""

    kind: Literal["tiny_yolo_v2"] = "tiny_yolo_v2"
    anchors: List[Tuple[float, float]] = Field(min_length=1)
    iou_threshold: float = Field(0.4, ge=0, le=1)


class DetectNetV2Decoding(_Strict):
    """NVIDIA DetectNet_v2 (TAO FaceNet / FaceDetect): coverage and bbox grids.

    For grid cell (row, col) whose coverage exceeds the threshold, with
    c = (col * stride + offset) and r = (row * stride + offset) in input pixels:
    x1 = c - bbox[0] * bbox_norm, y1 = r - bbox[1] * bbox_norm,
    x2 = c + bbox[2] * bbox_norm, y2 = r + bbox[3] * bbox_norm (DeepStream's parser);
    then greedy NMS.
    """

    kind: Literal["detectnet_v2"] = "detectnet_v2"
    coverage_output: str = Field(description="Output name of the [N, 1, rows, cols] coverage.")
    bbox_output: str = Field(description="Output name of the [N, 4, rows, cols] boxes.")
    stride: int = Field(16, gt=0)
    bbox_norm: float = Field(35.0, gt=0)
    offset: float = 0.5
    iou_threshold: float = Field(0.4, ge=0, le=1)


class BlazeFaceDecoding(_Strict):
    """MediaPipe BlazeFace (SSD) outputs: per-anchor regressors and score logits.

    Anchors as MediaPipe's SsdAnchorsCalculator makes them for its face detectors: for
    each group of consecutive layers with the same stride, a grid of
    ceil(input / stride) cells with ``anchors_per_layer`` anchors per layer of the group,
    centres (cell + ``anchor_offset``) / cells, fixed size 1. Per anchor the regressor
    holds (x, y, w, h) and ``keypoints`` (x, y) pairs in input pixels, positions relative
    to the anchor centre; scores are sigmoid(clip(logit, +-``score_clip``)); then
    MediaPipe's weighted NMS. The decoder is agent/perception/decoders/blazeface.py.
    """

    kind: Literal["blazeface"] = "blazeface"
    regressors_output: str = Field(description="Output name of the [N, anchors * values].")
    classificators_output: str = Field(description="Output name of the [N, anchors] logits.")
    strides: List[int] = Field(min_length=1, description="SSD layer strides, e.g. [8, 16, 16, 16].")
    anchors_per_layer: int = Field(
        2, ge=1, le=16, description="2 with interpolated_scale_aspect_ratio 1.0, else 1."
    )
    anchor_offset: float = Field(0.5, ge=0, le=1)
    keypoints: int = Field(6, ge=0, le=64, description="Keypoints after the box, per anchor.")
    score_clip: float = Field(100.0, gt=0)

    @model_validator(mode="after")
    def _positive_strides(self) -> "BlazeFaceDecoding":
        if any(s <= 0 for s in self.strides):
            raise ValueError("strides must be positive")
        return self

    def anchor_count(self, width: int, height: int) -> int:
        """How many anchors a width x height input has (the outputs' anchor dimension)."""
        count, layer = 0, 0
        while layer < len(self.strides):
            last = layer
            while last < len(self.strides) and self.strides[last] == self.strides[layer]:
                last += 1
            cells = -(-height // self.strides[layer]) * -(-width // self.strides[layer])
            count += cells * self.anchors_per_layer * (last - layer)
            layer = last
        return count


class CropAdjust(_Strict):
    """How a detector's box becomes the landmark net's crop (face detectors only).

    The bundled landmark nets expect crops in face-api's box style (the tiny face
    detector's, with which they are verified). Another detector's boxes (tighter,
    shifted, other aspect) are mapped to that style before cropping: the centre moves
    by (``shift_x`` x width, ``shift_y`` x height); ``square`` then replaces both sides
    with their geometric mean; then width and height are multiplied by ``scale_x`` /
    ``scale_y``. The face's reported box is not changed.
    """

    square: bool = Field(False, description="Make the box square (side sqrt(w * h)) first.")
    scale_x: float = Field(1.0, gt=0, le=4, description="Width multiplier.")
    scale_y: float = Field(1.0, gt=0, le=4, description="Height multiplier.")
    shift_x: float = Field(0.0, ge=-1, le=1, description="Centre shift, fraction of width.")
    shift_y: float = Field(0.0, ge=-1, le=1, description="Centre shift, fraction of height.")

    def apply(
        self, x1: float, y1: float, x2: float, y2: float
    ) -> Tuple[float, float, float, float]:
        """(x1, y1, x2, y2) -> the adjusted (x1, y1, x2, y2), same units."""
        w, h = x2 - x1, y2 - y1
        cx = (x1 + x2) / 2 + self.shift_x * w
        cy = (y1 + y2) / 2 + self.shift_y * h
        if self.square:
            w = h = (max(w, 0.0) * max(h, 0.0)) ** 0.5
        w, h = w * self.scale_x, h * self.scale_y
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


class LandmarkDecoding(_Strict):
    """136 values, 0..1 relative to the square-padded crop, iBUG-68 order."""

    kind: Literal["landmarks68_crop_unit"] = "landmarks68_crop_unit"


class KeypointDecoding(_Strict):
    """Keypoints in model-input pixels, [N, K, 2] (NVIDIA FPENet's softargmax output).

    The first 68 of the K points must be the iBUG-68 points (FPENet's 80-point
    layout starts with them); the rest are ignored.
    """

    kind: Literal["keypoints_input_pixels"] = "keypoints_input_pixels"
    keypoints_output: str = Field(description="Output name of the [N, K, 2] keypoints.")
    points: int = Field(68, ge=68, le=1000)


class ClassifierDecoding(_Strict):
    """Class scores: probabilities already (softmax) or logits that need one."""

    kind: Literal["classifier"] = "classifier"
    activation: Literal["softmax", "none"] = Field(
        "none", description="What to apply to the output: 'none' when it already is softmax."
    )


Preprocessing = Union[ImageInput, LandmarksInput]
Postprocessing = Union[
    TinyYoloDecoding,
    DetectNetV2Decoding,
    BlazeFaceDecoding,
    LandmarkDecoding,
    KeypointDecoding,
    ClassifierDecoding,
]


class ModelEntry(_Strict):
    """One model of the manifest."""

    task: Task
    file: str = Field(min_length=1, description="Path relative to the manifest's folder.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: Literal["onnx"] = "onnx"
    inputs: List[TensorSpec] = Field(min_length=1)
    outputs: List[TensorSpec] = Field(min_length=1)
    preprocessing: Preprocessing = Field(discriminator="kind")
    postprocessing: Postprocessing = Field(discriminator="kind")
    labels: Optional[List[str]] = None
    label_map: Optional[Dict[str, str]] = Field(
        None, description="Our label -> NVIDIA EmotionNet label, where one corresponds."
    )
    crop: Optional[CropAdjust] = Field(
        None, description="Face detectors: box -> landmark crop adjustment (CropAdjust)."
    )
    max_batch: int = Field(1, ge=1, le=256)
    license: str = Field(min_length=1)
    source: str = Field(min_length=1)
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> "ModelEntry":
        allowed = {
            "face_detector": ("tiny_yolo_v2", "detectnet_v2", "blazeface"),
            "face_landmarks": ("landmarks68_crop_unit", "keypoints_input_pixels"),
            "emotion": ("classifier",),
            "secondary": ("classifier",),
        }[self.task]
        if self.postprocessing.kind not in allowed:
            raise ValueError(
                f"a {self.task} model needs postprocessing kind "
                + " or ".join(allowed)
                + f", got {self.postprocessing.kind}"
            )
        if self.crop is not None and self.task != "face_detector":
            raise ValueError("crop applies to face_detector models only")
        names = {t.name for t in self.outputs}
        for attr in (
            "coverage_output",
            "bbox_output",
            "keypoints_output",
            "regressors_output",
            "classificators_output",
        ):
            name = getattr(self.postprocessing, attr, None)
            if name is not None and name not in names:
                raise ValueError(f"postprocessing.{attr} {name!r} is not one of the outputs")
        if self.task in ("face_detector", "face_landmarks") and not isinstance(
            self.preprocessing, ImageInput
        ):
            raise ValueError(f"a {self.task} model needs image preprocessing")
        if isinstance(self.postprocessing, BlazeFaceDecoding):
            self._check_blazeface(self.postprocessing)
        # an emotion model reads the landmarks (EmotionNet) or the face crop (an image
        # expression net such as face-api.js's)
        if self.task == "emotion" and not self.labels:
            raise ValueError("an emotion model needs labels")
        if self.labels and self.outputs[0].shape[-1] != len(self.labels):
            last = self.outputs[0].shape[-1]
            if isinstance(last, int):
                raise ValueError(
                    f"output {self.outputs[0].name} has {last} classes but "
                    f"{len(self.labels)} labels are listed"
                )
        if self.label_map and self.labels:
            unknown = sorted(set(self.label_map) - set(self.labels))
            if unknown:
                raise ValueError(f"label_map names unknown labels: {', '.join(unknown)}")
        return self

    def _check_blazeface(self, post: BlazeFaceDecoding) -> None:
        pre = self.preprocessing
        assert isinstance(pre, ImageInput)
        anchors = post.anchor_count(pre.width, pre.height)
        values = 4 + 2 * post.keypoints
        expected = {
            post.regressors_output: anchors * values,
            post.classificators_output: anchors,
        }
        for spec in self.outputs:
            want = expected.get(spec.name)
            last = spec.shape[-1]
            if want is not None and isinstance(last, int) and last != want:
                raise ValueError(
                    f"output {spec.name} has {last} values per image but the anchors "
                    f"({anchors} for {pre.width}x{pre.height}, strides {post.strides}) "
                    f"need {want}"
                )


class EmotionFusion(_Strict):
    """Several emotion models as one classifier: log-linear fusion of their probabilities.

    ``p(c) ~ exp(sum_m weights[m] * log p_m(c) + bias[c])``, renormalised; member
    probabilities are matched by label name (every member has exactly ``labels``, in any
    order) and floored at 1e-6 before the log. Weights and bias are fitted on validation
    data (tools/emotionnet/compare.py) and named with the models they were fitted for.
    """

    members: List[str] = Field(min_length=2, description="Emotion models, by manifest name.")
    weights: List[float] = Field(min_length=2, description="One weight per member.")
    bias: Optional[List[float]] = Field(None, description="One log-space offset per label.")
    labels: List[str] = Field(min_length=2, description="The output vocabulary, in order.")
    description: str = ""

    @model_validator(mode="after")
    def _shapes(self) -> "EmotionFusion":
        if len(self.weights) != len(self.members):
            raise ValueError(f"{len(self.weights)} weights for {len(self.members)} members")
        if self.bias is not None and len(self.bias) != len(self.labels):
            raise ValueError(f"{len(self.bias)} bias values for {len(self.labels)} labels")
        if len(set(self.members)) != len(self.members) or len(set(self.labels)) != len(self.labels):
            raise ValueError("members and labels must be unique")
        return self


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    models: Dict[str, ModelEntry]
    fusions: Dict[str, EmotionFusion] = Field(
        default_factory=dict, description="Emotion classifiers made of several emotion models."
    )

    @model_validator(mode="after")
    def _fusions(self) -> "Manifest":
        for name, fusion in self.fusions.items():
            if name in self.models:
                raise ValueError(f"fusion {name!r} has the name of a model")
            for member in fusion.members:
                entry = self.models.get(member)
                if entry is None or entry.task != "emotion":
                    raise ValueError(f"fusion {name!r}: {member!r} is not an emotion model")
                if sorted(entry.labels or []) != sorted(fusion.labels):
                    raise ValueError(
                        f"fusion {name!r}: {member!r} has labels {entry.labels}, "
                        f"not {fusion.labels}"
                    )
        return self


class ManifestError(Exception):
    """The manifest cannot be read or is invalid."""


class ModelIntegrityError(Exception):
    """A model file is missing or does not match the sha256 in the manifest."""


class ResolvedModel:
    """A manifest entry with its file's absolute path."""

    def __init__(self, name: str, entry: ModelEntry, path: Path) -> None:
        self.name = name
        self.entry = entry
        self.path = path

    def __repr__(self) -> str:
        return f"ResolvedModel({self.name!r}, {self.path})"


class LoadedManifest:
    """A validated manifest and the folder its relative file paths start from."""

    def __init__(self, manifest: Manifest, path: Path) -> None:
        self.manifest = manifest
        self.path = path

    @property
    def names(self) -> List[str]:
        return list(self.manifest.models)

    def fusion(self, name: str) -> Optional[EmotionFusion]:
        return self.manifest.fusions.get(name)

    def members(self, name: str) -> List[str]:
        """The models behind ``name``: a fusion's members, else ``[name]``."""
        fusion = self.manifest.fusions.get(name)
        return list(fusion.members) if fusion is not None else [name]

    def emotion_labels(self, name: str) -> List[str]:
        """The label vocabulary of the emotion classifier ``name`` (model or fusion)."""
        fusion = self.manifest.fusions.get(name)
        if fusion is not None:
            return list(fusion.labels)
        return list(self.resolve(name, "emotion").entry.labels or [])

    def resolve(self, name: str, task: Optional[Task] = None) -> ResolvedModel:
        entry = self.manifest.models.get(name)
        if entry is None and name in self.manifest.fusions:
            members = ", ".join(self.manifest.fusions[name].members)
            raise ManifestError(
                f"{self.path}: {name!r} is a fusion of {members}, not one model file"
            )
        if entry is None:
            known = ", ".join(sorted(self.manifest.models) + sorted(self.manifest.fusions))
            known = known or "none"
            raise ManifestError(f"{self.path}: no model named {name!r} (known: {known})")
        if task is not None and entry.task != task:
            raise ManifestError(
                f"{self.path}: model {name!r} has task {entry.task!r}, "
                f"but it is configured as the {task} model"
            )
        file_path = Path(entry.file)
        if not file_path.is_absolute():
            file_path = self.path.parent / file_path
        return ResolvedModel(name, entry, file_path)

    def verified(self, name: str, task: Optional[Task] = None) -> ResolvedModel:
        """Resolve ``name`` and check its file against the sha256 (raises ModelIntegrityError)."""
        model = self.resolve(name, task)
        verify_sha256(model)
        return model


def verify_sha256(model: ResolvedModel) -> None:
    try:
        actual = file_sha256(model.path)
    except FileNotFoundError:
        raise ModelIntegrityError(f"model {model.name!r}: file not found: {model.path}") from None
    except OSError as exc:
        raise ModelIntegrityError(
            f"model {model.name!r}: cannot read {model.path}: {exc.strerror}"
        ) from None
    if actual != model.entry.sha256:
        raise ModelIntegrityError(
            f"model {model.name!r}: {model.path} does not match the manifest "
            f"(sha256 {actual[:12]}..., expected {model.entry.sha256[:12]}...): the file is "
            "corrupt, truncated or a different model; restore it or update the manifest"
        )


def load_manifest(path: Optional[Path] = None) -> LoadedManifest:
    """Read and validate a manifest (default: the bundled one); raise ManifestError."""
    path = BUNDLED_MANIFEST if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: model manifest not found") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read model manifest: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: model manifest is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ManifestError(f"{path}: {where}invalid YAML") from None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ManifestError(f"{path}: invalid model manifest\n" + "\n".join(lines)) from None
    return LoadedManifest(manifest, path)
