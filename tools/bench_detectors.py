#!/usr/bin/env python3
"""Face detector benchmarks: the figures of docs/benchmarks.md, section "Face detectors".

    python tools/bench_detectors.py recall    # the shared facial_expressions set
    python tools/bench_detectors.py sizes     # recall by face size in a 640x360 frame
    python tools/bench_detectors.py fp        # face-free images: false detections
    python tools/bench_detectors.py video     # faces found per frame on a generated video
    python tools/bench_detectors.py latency   # ms per frame, ONNX Runtime threads x spinning
    python tools/bench_detectors.py crop      # crop adjustment vs landmark agreement
    python tools/bench_detectors.py report    # markdown tables from build/bench/*.json

Every subcommand writes build/bench/<name>.json (machine, date, load average, versions,
figures); ``report`` prints the markdown that docs/benchmarks.md quotes. Nothing is
downloaded at run time; the inputs are:

* the shared data set ``../shared/data/facial_expressions/images`` (read in place, never
  copied): 12,794 224x224 grayscale LFW-style face crops and 924 small colour face
  crops, one face each;
* the 6 demo photos of the npm package @vladmandic/face-api (MIT; build/npm, installed by
  scripts/test.sh) for the video, with their 22 faces;
* face-free photos from the scikit-image 0.26.0 wheel (CC0 / public domain, listed in
  FACE_FREE; ``pip download --no-deps scikit-image==0.26.0 -d build/bench``) and
  synthetic scenes drawn here;
* the ONNX detectors: the bundled ones (engines/models) and, for the comparison, the
  other BlazeFace variants built by tools/blazeface/port.py into build/blazeface/onnx.

Detection settings (agent/perception/frame.py, as the agent runs them): NMS IoU 0.3
(the configuration default), ``min_face_px`` 8 (the smallest allowed, so that the size
filter does not hide what the detector finds), scores kept down to 0.3 so that recall
and false positives can be read at several thresholds (0.5 is the default).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools" / "blazeface"))

import onnxruntime as ort  # noqa: E402

from agent.perception import Perception, PerceptionSettings  # noqa: E402
from agent.perception.video import cv2_module  # noqa: E402
from engines.manifest import CropAdjust, ModelEntry, load_manifest  # noqa: E402

OUT = REPO / "build" / "bench"
DATASET = REPO.parent / "shared" / "data" / "facial_expressions" / "images"
NPM_DEMO = REPO / "build" / "npm" / "node_modules" / "@vladmandic" / "face-api" / "demo"
SKIMAGE_WHEEL = "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
DETECTORS = ["tiny_face_detector", "blazeface_short", "blazeface_full", "blazeface_back"]
THRESHOLDS = (0.5, 0.6, 0.7)
KEEP_SCORE = 0.3
BENCH_SETTINGS = PerceptionSettings(
    detection_threshold=KEEP_SCORE, nms_iou=0.3, min_face_px=8, max_faces=64
)

# scikit-image 0.26.0 data images with no person in them, and their licences (from the
# docstrings of skimage/data/_fetchers.py). chelsea is a cat: a hard negative.
FACE_FREE = {
    "brick.png": "CC0 (CC0Textures)",
    "grass.png": "CC0 (CC0Textures)",
    "gravel.png": "CC0 (CC0Textures)",
    "cell.png": "CC0",
    "chelsea.png": "CC0 (Stefan van der Walt); a cat",
    "clock_motion.png": "public domain (Stefan van der Walt)",
    "coffee.png": "CC0 (Rachel Michetti)",
    "horse.png": "CC0 (Andreas Preuss)",
    "hubble_deep_field.jpg": "public domain (NASA)",
    "ihc.png": "no known copyright restrictions",
    "microaneurysms.png": "CC0 (Andreas Maier)",
    "retina.jpg": "CC0",
    "rocket.jpg": "public domain (SpaceX)",
    "text.png": "public domain",
}

# The 22 faces of the face-api demo photos (x1, y1, x2, y2 in the 1920-px originals):
# BlazeFace back-camera model on each full photo, every box checked by eye; no face is
# missing and there is no other face in the photos.
DEMO_FACES = {
    "sample1.jpg": [(420, 410, 609, 599), (1500, 275, 1643, 418), (854, 472, 1026, 644)],
    "sample2.jpg": [(1460, 198, 1664, 402), (355, 184, 563, 392), (882, 253, 1082, 453)],
    "sample3.jpg": [(591, 388, 799, 596), (1067, 258, 1319, 511), (1469, 361, 1677, 569)],
    "sample4.jpg": [
        (975, 227, 1180, 432),
        (678, 127, 841, 290),
        (1287, 204, 1466, 384),
        (240, 251, 418, 429),
    ],
    "sample5.jpg": [
        (778, 160, 948, 330),
        (576, 463, 767, 654),
        (1418, 439, 1638, 659),
        (1113, 261, 1295, 444),
        (356, 944, 561, 1149),
    ],
    "sample6.jpg": [
        (659, 382, 902, 625),
        (1466, 316, 1710, 560),
        (1147, 353, 1386, 591),
        (236, 534, 468, 766),
    ],
}
VIDEO = OUT / "demo-pan-zoom-640x360.mp4"
VIDEO_SIZE = (640, 360)
VIDEO_FPS = 25
FRAMES_PER_SHOT = 40


# ---------------------------------------------------------------------------------------
# environment and models
# ---------------------------------------------------------------------------------------
def machine() -> Dict[str, Any]:
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "opencv": cv2_module().__version__,
        "numpy": np.__version__,
        "load_before": list(os.getloadavg()),
    }


def save(name: str, data: Dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    data["machine"]["load_after"] = list(os.getloadavg())
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")
    return path


def model_entry(name: str) -> Tuple[ModelEntry, Path]:
    """A bundled manifest model, or a BlazeFace variant built into build/blazeface/onnx."""
    manifest = load_manifest()
    if name in manifest.names:
        resolved = manifest.verified(name)
        return resolved.entry, resolved.path
    import port  # tools/blazeface/port.py

    key = name.split("_", 1)[1]
    fname = port.MODELS[key][2]
    path = REPO / "build" / "blazeface" / "onnx" / fname
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        ((_, model),) = port.build_all(port.DEFAULT_SOURCE, [key])
        path.write_bytes(port.serialize(model))
    from engines.manifest import file_sha256

    entry = ModelEntry.model_validate(port.manifest_entry(key, file_sha256(path), str(path)))
    return entry, path


def session(path: Path, threads: int = 1, spinning: Optional[bool] = False) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def runner(sess: Any) -> Any:
    name = sess.get_inputs()[0].name
    outputs = [o.name for o in sess.get_outputs()]
    return lambda batch: sess.run(outputs, {name: batch})


def perception(
    name: str,
    threads: int = 1,
    spinning: Optional[bool] = False,
    crop: Optional[CropAdjust] = None,
    landmarks: str = "face_landmark_68",
) -> Perception:
    """The agent's Perception for detector ``name`` (its manifest crop, or ``crop``)."""
    entry, path = model_entry(name)
    if crop is not None:
        entry = entry.model_copy(update={"crop": crop})
    lm_entry, lm_path = model_entry(landmarks)
    return Perception(
        runner(session(path, threads, spinning)),
        entry,
        runner(session(lm_path, threads, spinning)),
        lm_entry,
        settings=BENCH_SETTINGS,
    )


# ---------------------------------------------------------------------------------------
# recall on the shared data set
# ---------------------------------------------------------------------------------------
def dataset_files(every: int = 1) -> List[Path]:
    files = sorted(p for p in DATASET.iterdir() if p.is_file())
    return files[::every]


def in_canvas(img: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """The image centred in a mid-gray canvas twice its width and height."""
    h, w = img.shape[:2]
    canvas = np.full((2 * h, 2 * w, 3), 128, np.uint8)
    x0, y0 = w // 2, h // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = img
    return canvas, (x0, y0, x0 + w, y0 + h)


def best(boxes: Sequence[Tuple[float, ...]], region=None) -> Tuple[float, List[float]]:
    """Highest score (0 if none) and its box; with region, only boxes centred inside it."""
    top, box = 0.0, [math.nan] * 4
    for b in boxes:
        if region is not None:
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if not (region[0] <= cx <= region[2] and region[1] <= cy <= region[3]):
                continue
        if b[4] > top:
            top, box = float(b[4]), [float(v) for v in b[:4]]
    return top, box


def cmd_recall(args: argparse.Namespace) -> None:
    cv2 = cv2_module()
    files = dataset_files(args.every)
    meta = machine()
    dets = {name: perception(name) for name in args.detectors}
    rows: Dict[str, Dict[str, list]] = {
        n: {"asis": [], "canvas": [], "box": [], "canvas_box": []} for n in dets
    }
    kinds = []
    started = time.time()
    for i, path in enumerate(files):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        kinds.append("gray224" if img.shape[:2] == (224, 224) else "small")
        canvas, region = in_canvas(img)
        for name, p in dets.items():
            s1, b1 = best(p.detect(img))
            s2, b2 = best(p.detect(canvas), region)
            rows[name]["asis"].append(s1)
            rows[name]["box"].append(b1)
            rows[name]["canvas"].append(s2)
            rows[name]["canvas_box"].append(b2)
        if (i + 1) % 500 == 0:
            print(f"{i + 1}/{len(files)} images, {time.time() - started:.0f} s", flush=True)
    save(
        "recall",
        {
            "machine": meta,
            "every": args.every,
            "files": [p.name for p in files],
            "kinds": kinds,
            "detectors": rows,
        },
    )


SIZES = (30, 45, 60, 90, 135, 200, 270, 360)


def cmd_sizes(args: argparse.Namespace) -> None:
    """Recall vs face size: 224x224 crops scaled to SIZES px, centred in a gray 640x360."""
    cv2 = cv2_module()
    files = [p for p in dataset_files() if cv2.imread(str(p)).shape[:2] == (224, 224)]
    files = files[:: args.every]
    meta = machine()
    dets = {name: perception(name) for name in args.detectors}
    scores: Dict[str, Dict[int, List[float]]] = {n: {s: [] for s in SIZES} for n in dets}
    w, h = VIDEO_SIZE
    for path in files:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for size in SIZES:
            frame = np.full((h, w, 3), 128, np.uint8)
            face = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            x0, y0 = (w - size) // 2, (h - size) // 2
            frame[y0 : y0 + size, x0 : x0 + size] = face
            region = (x0, y0, x0 + size, y0 + size)
            for name, p in dets.items():
                scores[name][size].append(best(p.detect(frame), region)[0])
    save("sizes", {"machine": meta, "images": len(files), "sizes": SIZES, "detectors": scores})


# ---------------------------------------------------------------------------------------
# false positives on face-free images
# ---------------------------------------------------------------------------------------
def synthetic_scene(rng: np.random.Generator) -> np.ndarray:
    """A 640x360 scene of shapes, lines, text and textures; no face drawn on purpose."""
    cv2 = cv2_module()
    w, h = VIDEO_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3) + rng.uniform(-1, 1, 3) * xx[..., None] / w * 120
    base = base + rng.uniform(-1, 1, 3) * yy[..., None] / h * 120
    img = np.clip(base, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(5, 25)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 5)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(10, 160))
        thick = int(rng.choice([-1, 1, 2, 4]))
        if kind == 0:
            cv2.rectangle(
                img, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), color, thick
            )
        elif kind == 1:
            axes = (size // 2, int(size * rng.uniform(0.3, 1.2)) // 2)
            cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, color, thick)
        elif kind == 2:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), color, 3)
        elif kind == 3:
            pts = rng.integers(0, [w, h], size=(int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], color)
        else:
            text = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(3, 12))))
            cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.5, 3), color, 2)
    noise = rng.normal(0, rng.uniform(0, 12), img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if rng.uniform() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 3)))
    return img


def face_free_frames(seed: int = 5) -> List[Tuple[str, np.ndarray]]:
    cv2 = cv2_module()
    rng = np.random.default_rng(seed)
    frames: List[Tuple[str, np.ndarray]] = []
    wheel = OUT / SKIMAGE_WHEEL
    if not wheel.exists():
        sys.exit(f"missing {wheel}: pip download --no-deps scikit-image==0.26.0 -d build/bench")
    with zipfile.ZipFile(wheel) as zf:
        for fname in FACE_FREE:
            data = np.frombuffer(zf.read("skimage/data/" + fname), np.uint8)
            img = cv2.imdecode(data, cv2.IMREAD_COLOR)
            h, w = img.shape[:2]
            frames.append((fname, img))
            for _ in range(9):  # crops at random scales, resized to 640 px wide
                s = rng.uniform(0.3, 1.0)
                cw, ch = max(16, int(w * s)), max(16, int(h * s))
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                crop = img[y : y + ch, x : x + cw]
                scale = VIDEO_SIZE[0] / cw
                crop = cv2.resize(crop, (VIDEO_SIZE[0], max(1, round(ch * scale))))
                frames.append((fname, crop))
    for _ in range(100):
        frames.append(("synthetic", synthetic_scene(rng)))
    return frames


def cmd_fp(args: argparse.Namespace) -> None:
    frames = face_free_frames()
    meta = machine()
    result: Dict[str, Any] = {"machine": meta, "frames": len(frames), "detectors": {}}
    sources = [name for name, _ in frames]
    for name in args.detectors:
        p = perception(name)
        scores = [[float(b[4]) for b in p.detect(img)] for _, img in frames]
        result["detectors"][name] = {"scores": scores}
    result["sources"] = sources
    save("fp", result)


# ---------------------------------------------------------------------------------------
# video: pan, zoom and rotation over the face-api demo photos
# ---------------------------------------------------------------------------------------
def shots(seed: int = 11) -> List[Dict[str, Any]]:
    """12 shots of FRAMES_PER_SHOT frames: 2 per photo, each following one face."""
    rng = np.random.default_rng(seed)
    out = []
    for photo, faces in DEMO_FACES.items():
        for target in rng.choice(len(faces), size=2, replace=False):
            x1, y1, x2, y2 = faces[int(target)]
            # face height in the 360-px frame goes from h0 to h1 px (moderate zoom)
            h0, h1 = rng.uniform(60, 150, size=2)
            out.append(
                {
                    "photo": photo,
                    "target": int(target),
                    "face_px": [float(h0), float(h1)],
                    "rotation_deg": float(rng.uniform(8, 15)) * float(rng.choice([-1, 1])),
                    "pan": [float(v) for v in rng.uniform(-0.25, 0.25, size=2)],
                    "face": [x1, y1, x2, y2],
                }
            )
    return out


def shot_transform(shot: Dict[str, Any], t: float) -> np.ndarray:
    """2x3 affine photo -> frame at time t in [0, 1] of the shot."""
    x1, y1, x2, y2 = shot["face"]
    face_h = y2 - y1
    px = shot["face_px"][0] + (shot["face_px"][1] - shot["face_px"][0]) * t
    scale = px / face_h
    angle = shot["rotation_deg"] * math.sin(2 * math.pi * t)
    w, h = VIDEO_SIZE
    # the face centre drifts from (pan) to (-pan) of the frame size around the frame centre
    px_off = shot["pan"][0] * (1 - 2 * t) * w
    py_off = shot["pan"][1] * (1 - 2 * t) * h
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    m = cv2_module().getRotationMatrix2D(centre, angle, scale)
    m[0, 2] += w / 2 + px_off - centre[0]
    m[1, 2] += h / 2 + py_off - centre[1]
    return m


def transformed_box(m: np.ndarray, box: Sequence[float]) -> Tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    pts = np.array([[x1, y1, 1], [x2, y1, 1], [x2, y2, 1], [x1, y2, 1]], np.float64) @ m.T
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def make_video() -> List[Dict[str, Any]]:
    """Write VIDEO (not committed; ~2 MB) and return per-frame ground truth."""
    cv2 = cv2_module()
    w, h = VIDEO_SIZE
    OUT.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(VIDEO), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (w, h))
    truth = []
    photos = {name: cv2.imread(str(NPM_DEMO / name)) for name in DEMO_FACES}
    for shot in shots():
        img = photos[shot["photo"]]
        for k in range(FRAMES_PER_SHOT):
            m = shot_transform(shot, k / (FRAMES_PER_SHOT - 1))
            frame = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_AREA, borderValue=(0, 0, 0))
            writer.write(frame)
            boxes = [transformed_box(m, b) for b in DEMO_FACES[shot["photo"]]]
            visible = [
                i for i, (a, b, c, d) in enumerate(boxes) if a >= 0 and b >= 0 and c <= w and d <= h
            ]
            truth.append({"boxes": boxes, "visible": visible, "target": shot["target"]})
    writer.release()
    return truth


def inside(point: Tuple[float, float], box: Sequence[float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def cmd_video(args: argparse.Namespace) -> None:
    cv2 = cv2_module()
    if not NPM_DEMO.is_dir():
        sys.exit(f"missing {NPM_DEMO}: run scripts/test.sh once (it installs build/npm)")
    truth = make_video()
    meta = machine()
    cap = cv2.VideoCapture(str(VIDEO))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if len(frames) != len(truth):
        sys.exit(f"read {len(frames)} frames, wrote {len(truth)}")
    result: Dict[str, Any] = {
        "machine": meta,
        "video": {
            "file": str(VIDEO.relative_to(REPO)),
            "frames": len(frames),
            "size": list(VIDEO_SIZE),
            "fps": VIDEO_FPS,
            "shots": shots(),
        },
        "truth": truth,
        "detectors": {},
    }
    for name in args.detectors:
        p = perception(name)
        per_frame = []
        for frame in frames:
            per_frame.append([[float(v) for v in b] for b in p.detect(frame)])
        result["detectors"][name] = per_frame
    save("video", result)


def video_figures(data: Dict[str, Any], name: str, threshold: float) -> Dict[str, float]:
    truth = data["truth"]
    target_found = visible_total = visible_found = false = frames_any = 0
    for gt, dets in zip(truth, data["detectors"][name]):
        dets = [d for d in dets if d[4] > threshold]
        centres = [((d[0] + d[2]) / 2, (d[1] + d[3]) / 2) for d in dets]
        found = {i for i, b in enumerate(gt["boxes"]) if any(inside(c, b) for c in centres)}
        target_found += gt["target"] in found
        visible_total += len(gt["visible"])
        visible_found += len(found & set(gt["visible"]))
        frames_any += bool(found & set(gt["visible"]))
        false += sum(1 for c in centres if not any(inside(c, b) for b in gt["boxes"]))
    n = len(truth)
    return {
        "frames": n,
        "target_found": target_found,
        "frames_with_a_face_found": frames_any,
        "visible_faces": visible_total,
        "visible_found": visible_found,
        "false_detections": false,
    }


# ---------------------------------------------------------------------------------------
# latency: ONNX Runtime threads x spinning
# ---------------------------------------------------------------------------------------
def cmd_latency(args: argparse.Namespace) -> None:
    cv2 = cv2_module()
    if not VIDEO.exists():
        sys.exit(f"missing {VIDEO}: run `video` first")
    cap = cv2.VideoCapture(str(VIDEO))
    frames = []
    while len(frames) < 120:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    meta = machine()
    configs = [(1, False), (1, True), (2, False), (2, True), (0, None)]
    result: Dict[str, Any] = {"machine": meta, "runs": args.runs, "detectors": {}}
    rounds = 6  # settings interleaved in rounds, so that load from elsewhere hits all alike
    chunk = max(1, args.runs // rounds)
    for name in args.detectors:
        entry, path = model_entry(name)
        x = np.random.default_rng(0).uniform(0, 255, [1, *entry.inputs[0].shape[1:]])
        x = x.astype(np.float32)
        setups = {}
        for threads, spinning in configs:
            spin = "default" if spinning is None else ("on" if spinning else "off")
            key = f"threads={threads or 'default'} spinning={spin}"
            run = runner(session(path, threads, spinning))
            p = perception(name, threads, spinning)
            for _ in range(20):
                run(x)
            for frame in frames[:10]:
                p.detect(frame)
            setups[key] = (run, p, [], [], [], [])
        for r in range(rounds):
            for _key, (run, p, model_ms, fps, process_fps, loads) in setups.items():
                for _ in range(chunk):
                    t0 = time.perf_counter()
                    run(x)
                    model_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                for k in range(chunk):
                    p.detect(frames[(r * chunk + k) % len(frames)])
                fps.append(chunk / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for k in range(chunk):
                    p.process(frames[(r * chunk + k) % len(frames)])
                process_fps.append(chunk / (time.perf_counter() - t0))
                loads.append(os.getloadavg()[0])
        rows = {}
        for key, (_run, _p, model_ms, fps, process_fps, loads) in setups.items():
            rows[key] = {
                "model_ms_median": float(np.median(model_ms)),
                "model_ms_p90": float(np.percentile(model_ms, 90)),
                "detect_fps": float(np.median(fps)),
                "process_fps": float(np.median(process_fps)),
                "load": [float(min(loads)), float(max(loads))],
            }
            print(name, key, rows[key], flush=True)
        result["detectors"][name] = rows
    save("latency", result)


# ---------------------------------------------------------------------------------------
# crop adjustment: landmark agreement with the tiny detector's crops
# ---------------------------------------------------------------------------------------
def inter_ocular(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[36:42].mean(axis=0) - points[42:48].mean(axis=0)))


def landmarks_for(p: Perception, frame: np.ndarray, box: Sequence[float]) -> np.ndarray:
    pts, _, kept = p.landmarks(frame, [(*box, 1.0)])
    return pts[0] if kept else np.full((68, 2), np.nan)


def nme(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=1).mean() / max(inter_ocular(b), 1e-6))


def fit_adjustment(boxes_det: np.ndarray, boxes_ref: np.ndarray) -> Dict[str, float]:
    """Medians of the box relation: ref centre offset / det size, ref size / det size."""
    dw = boxes_det[:, 2] - boxes_det[:, 0]
    dh = boxes_det[:, 3] - boxes_det[:, 1]
    rw = boxes_ref[:, 2] - boxes_ref[:, 0]
    rh = boxes_ref[:, 3] - boxes_ref[:, 1]
    dcx = ((boxes_ref[:, 0] + boxes_ref[:, 2]) - (boxes_det[:, 0] + boxes_det[:, 2])) / 2
    dcy = ((boxes_ref[:, 1] + boxes_ref[:, 3]) - (boxes_det[:, 1] + boxes_det[:, 3])) / 2
    return {
        "scale_x": float(np.median(rw / dw)),
        "scale_y": float(np.median(rh / dh)),
        "shift_x": float(np.median(dcx / dw)),
        "shift_y": float(np.median(dcy / dh)),
        "det_aspect_h_over_w": float(np.median(dh / dw)),
        "ref_aspect_h_over_w": float(np.median(rh / rw)),
    }


def cmd_crop(args: argparse.Namespace) -> None:
    cv2 = cv2_module()
    recall = json.loads((OUT / "recall.json").read_text())
    files = recall["files"]
    ref_rows = recall["detectors"]["tiny_face_detector"]
    meta = machine()
    tiny = perception("tiny_face_detector")
    tiny_lm = perception("tiny_face_detector", landmarks="face_landmark_68_tiny")
    result: Dict[str, Any] = {"machine": meta, "detectors": {}}
    for name in args.detectors:
        if name == "tiny_face_detector":
            continue
        rows = recall["detectors"][name]
        both = [
            i for i in range(len(files)) if ref_rows["canvas"][i] > 0.5 and rows["canvas"][i] > 0.5
        ][:: args.every]
        fit_idx, test_idx = both[0::2], both[1::2]
        det_boxes = np.array([rows["canvas_box"][i] for i in both])
        ref_boxes = np.array([ref_rows["canvas_box"][i] for i in both])
        fitted = fit_adjustment(det_boxes[0::2], ref_boxes[0::2])
        images = {}
        for i in both:
            img = cv2.imread(str(DATASET / files[i]), cv2.IMREAD_COLOR)
            images[i] = in_canvas(img)[0]
        reference = {i: landmarks_for(tiny, images[i], ref_rows["canvas_box"][i]) for i in both}
        candidates = {
            "none": CropAdjust(),
            "fitted": CropAdjust(
                scale_x=fitted["scale_x"],
                scale_y=fitted["scale_y"],
                shift_x=fitted["shift_x"],
                shift_y=fitted["shift_y"],
            ),
        }
        for ds in (-0.1, -0.05, 0.05, 0.1):
            for dy in (-0.04, 0.0, 0.04):
                candidates[f"fitted scale{ds:+.2f} shift_y{dy:+.2f}"] = CropAdjust(
                    scale_x=fitted["scale_x"] * (1 + ds),
                    scale_y=fitted["scale_y"] * (1 + ds),
                    shift_x=fitted["shift_x"],
                    shift_y=fitted["shift_y"] + dy,
                )
        sq = math.sqrt(fitted["scale_x"] * fitted["scale_y"])
        candidates["square, fitted scale and shift"] = CropAdjust(
            square=True, scale_x=sq, scale_y=sq, shift_y=fitted["shift_y"]
        )
        bundled = model_entry(name)[0].crop
        if bundled is not None:
            candidates["bundled (manifest.yaml)"] = bundled
        scores: Dict[str, Dict[str, float]] = {}
        for label, adjust in candidates.items():
            p = perception(name, crop=adjust)
            errs = {
                i: nme(landmarks_for(p, images[i], rows["canvas_box"][i]), reference[i])
                for i in both
            }
            fit_e = np.array([errs[i] for i in fit_idx])
            test_e = np.array([errs[i] for i in test_idx])
            scores[label] = {
                "adjust": adjust.model_dump(),
                "fit_mean": float(np.nanmean(fit_e)),
                "test_mean": float(np.nanmean(test_e)),
                "test_p95": float(np.nanpercentile(test_e, 95)),
                "test_median": float(np.nanmedian(test_e)),
            }
            print(name, label, scores[label], flush=True)
        chosen = min(
            (k for k in scores if not k.startswith("bundled")), key=lambda k: scores[k]["fit_mean"]
        )
        context = np.array(
            [
                nme(landmarks_for(tiny_lm, images[i], ref_rows["canvas_box"][i]), reference[i])
                for i in test_idx
            ]
        )
        result["detectors"][name] = {
            "images": len(both),
            "fit_images": len(fit_idx),
            "test_images": len(test_idx),
            "box_relation": fitted,
            "candidates": scores,
            "chosen": chosen,
            "context_landmark68_tiny_vs_full": {
                "mean": float(np.nanmean(context)),
                "p95": float(np.nanpercentile(context, 95)),
            },
        }
    save("crop", result)


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------
def _pct(a: int, b: int) -> str:
    return f"{a} / {b} ({100 * a / b:.1f} %)" if b else "-"


def _machine_line(meta: Dict[str, Any]) -> str:
    return (
        f"{meta['cpu']}, {meta['cpus']} vCPUs, {meta['date']}, load average "
        f"{meta['load_before'][0]:.2f} before / {meta['load_after'][0]:.2f} after; "
        f"Python {meta['python']}, onnxruntime {meta['onnxruntime']}, OpenCV {meta['opencv']}"
    )


def cmd_report(args: argparse.Namespace) -> None:
    lines: List[str] = []
    path = OUT / "recall.json"
    if path.exists():
        data = json.loads(path.read_text())
        kinds = np.array(data["kinds"])
        lines += [
            "### Recall on the shared facial_expressions set",
            "",
            f"Measured: {_machine_line(data['machine'])}.",
            "",
            "| detector | threshold | as is: all | 224x224 gray | small colour | "
            "in a 2x canvas: all | 224x224 gray | small colour |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, rows in data["detectors"].items():
            for t in THRESHOLDS:
                cells = []
                for col in ("asis", "canvas"):
                    s = np.array(rows[col])
                    for sel in (np.ones_like(kinds, bool), kinds == "gray224", kinds == "small"):
                        cells.append(_pct(int((s[sel] > t).sum()), int(sel.sum())))
                lines.append(f"| `{name}` | {t} | " + " | ".join(cells) + " |")
        lines.append("")
    path = OUT / "sizes.json"
    if path.exists():
        data = json.loads(path.read_text())
        sizes = data["sizes"]
        lines += [
            "### Recall by face size",
            "",
            f"Measured: {_machine_line(data['machine'])}.",
            "",
            "| detector | threshold | "
            + " | ".join(f"{s} px ({100 * s / VIDEO_SIZE[1]:.0f} %)" for s in sizes)
            + " |",
            "| --- | --- | " + " | ".join("---" for _ in sizes) + " |",
        ]
        for name, rows in data["detectors"].items():
            for t in THRESHOLDS:
                cells = [f"{100 * np.mean(np.array(rows[str(s)]) > t):.1f} %" for s in sizes]
                lines.append(f"| `{name}` | {t} | " + " | ".join(cells) + " |")
        lines.append("")
    path = OUT / "fp.json"
    if path.exists():
        data = json.loads(path.read_text())
        sources = np.array(data["sources"])
        lines += [
            "### False positives on face-free images",
            "",
            f"Measured: {_machine_line(data['machine'])}.",
            "",
            "| detector | threshold | frames with a detection | detections | "
            "photos (140 views) | synthetic (100) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, rows in data["detectors"].items():
            for t in THRESHOLDS:
                counts = np.array([sum(1 for s in sc if s > t) for sc in rows["scores"]])
                photo = sources != "synthetic"
                lines.append(
                    f"| `{name}` | {t} | {_pct(int((counts > 0).sum()), len(counts))} | "
                    f"{int(counts.sum())} | {int((counts[photo] > 0).sum())} | "
                    f"{int((counts[~photo] > 0).sum())} |"
                )
        by_source: Dict[str, List[str]] = {}
        for name, rows in data["detectors"].items():
            for src, sc in zip(sources, rows["scores"]):
                if any(s > 0.5 for s in sc):
                    by_source.setdefault(name, []).append(str(src))
        lines.append("")
        for name, srcs in by_source.items():
            uniq = sorted(set(srcs), key=srcs.index)
            lines.append(
                f"- `{name}` at 0.5 fires on: " + ", ".join(f"{s} ({srcs.count(s)})" for s in uniq)
            )
        lines.append("")
    path = OUT / "video.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += [
            "### Faces found on the generated video",
            "",
            f"Measured: {_machine_line(data['machine'])}.",
            "",
            "| detector | threshold | frames where the followed face is found | "
            "frames with a face found | visible faces found | false detections |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in data["detectors"]:
            for t in THRESHOLDS:
                f = video_figures(data, name, t)
                lines.append(
                    f"| `{name}` | {t} | {_pct(f['target_found'], f['frames'])} | "
                    f"{_pct(f['frames_with_a_face_found'], f['frames'])} | "
                    f"{_pct(f['visible_found'], f['visible_faces'])} | {f['false_detections']} |"
                )
        lines.append("")
    path = OUT / "latency.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += [
            "### Latency (batch 1, ONNX Runtime CPU)",
            "",
            f"Measured: {_machine_line(data['machine'])}; {data['runs']} runs each.",
            "",
            "| detector | ORT setting | model ms (median) | model ms (p90) | "
            "detect() frames/s | process() frames/s (+ 68 landmarks per face) | "
            "1-min load during the runs |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, rows in data["detectors"].items():
            for key, r in rows.items():
                lines.append(
                    f"| `{name}` | {key} | {r['model_ms_median']:.2f} | "
                    f"{r['model_ms_p90']:.2f} | {r['detect_fps']:.0f} | {r['process_fps']:.0f} | "
                    f"{r['load'][0]:.2f} - {r['load'][1]:.2f} |"
                )
        lines.append("")
    path = OUT / "crop.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += [
            "### Crop adjustment: landmark agreement with the tiny detector's crops",
            "",
            f"Measured: {_machine_line(data['machine'])}.",
            "",
        ]
        for name, r in data["detectors"].items():
            rel = r["box_relation"]
            lines += [
                f"`{name}`: {r['images']} canvas images where both find the face at 0.5 "
                f"(fit on {r['fit_images']}, figures on the other {r['test_images']}). "
                f"Box relation (medians): tiny width / this width {rel['scale_x']:.3f}, "
                f"height {rel['scale_y']:.3f}, centre shift x {rel['shift_x']:+.3f}, "
                f"y {rel['shift_y']:+.3f} of this box's size; aspect h/w "
                f"{rel['det_aspect_h_over_w']:.3f} "
                f"(tiny {rel['ref_aspect_h_over_w']:.3f}). Chosen: **{r['chosen']}**. "
                "Context: FaceLandmark68TinyNet vs FaceLandmark68Net on the same tiny crops: "
                f"mean {r['context_landmark68_tiny_vs_full']['mean']:.4f}, "
                f"p95 {r['context_landmark68_tiny_vs_full']['p95']:.4f}.",
                "",
                "| adjustment | square | scale x / y | shift x / y | NME mean (fit half) | "
                "NME mean | NME median | NME p95 |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for label, s in r["candidates"].items():
                a = s["adjust"]
                lines.append(
                    f"| {label} | {a['square']} | {a['scale_x']:.3f} / {a['scale_y']:.3f} | "
                    f"{a['shift_x']:+.3f} / {a['shift_y']:+.3f} | {s['fit_mean']:.4f} | "
                    f"{s['test_mean']:.4f} | {s['test_median']:.4f} | {s['test_p95']:.4f} |"
                )
            lines.append("")
    print("\n".join(lines))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, func in (
        ("recall", cmd_recall),
        ("sizes", cmd_sizes),
        ("fp", cmd_fp),
        ("video", cmd_video),
        ("latency", cmd_latency),
        ("crop", cmd_crop),
        ("report", cmd_report),
    ):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--detectors", type=lambda s: s.split(","), default=DETECTORS)
        p.add_argument("--every", type=int, default=1, help="use every Nth image")
        p.add_argument("--runs", type=int, default=300, help="latency: runs per setting")
    args = ap.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
