"""How much the resize convention of the landmark crops matters (docs/benchmarks.md,
"Real-time loop"): why the loop keeps face-api's sampling instead of the cheaper
cv2.resize.

    python tools/bench_resize_convention.py

For every face the default detector finds in the bundled sample photos, each photo
scaled by 0.6, 1.0, 1.7 and 2.5, the landmark net runs twice on the face's crop:
prepared as the agent does (face-api / TensorFlow sampling, source = destination x
scale, zero padding to a centred square) and with OpenCV's ``cv2.resize``
(INTER_LINEAR, half-pixel centres) into the same centred square. Both sets of
landmarks are mapped back to frame pixels, each through its own exact geometry,
and compared: the mean distance per face, in pixels and as a share of the distance
between the eye centres. Prints one line per face and the summary.
"""

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    sys.path.insert(0, str(REPO))
    from agent.config import AgentConfig
    from agent.engine_runners import prepare_runners
    from agent.perception.factory import build_perception, manifest_for
    from agent.perception.preprocess import prepare_image
    from agent.perception.video import cv2_module

    cv2 = cv2_module()
    config = AgentConfig()
    manifest = manifest_for(config)
    runners = prepare_runners(config, manifest)
    perception = build_perception(config, lambda model: runners[model.name], manifest)
    landmarks = runners[config.models.landmarks]
    pre = manifest.resolve(config.models.landmarks).entry.preprocessing
    size = pre.width

    def run(batch: np.ndarray) -> np.ndarray:  # [1, 112, 112, 3] -> [68, 2] model pixels
        landmarks.input_buffer(1)[:] = batch
        return np.asarray(landmarks.run_buffer(1)[0][0]).reshape(68, 2) * size

    shares = []
    pixels = []
    for path in sorted((REPO / "agent" / "samples").glob("*.jpg")):
        photo = cv2.imread(str(path))
        for scale in (0.6, 1.0, 1.7, 2.5):
            frame = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            h, w = frame.shape[:2]
            for box in perception.detect(frame):
                cx, cy, cw, ch = perception.crop_box(box, w, h)
                crop = frame[cy : cy + ch, cx : cx + cw]
                ours, placement = prepare_image(crop, pre)
                # cv2.resize into the same centred square: the crop's longer side
                # becomes `size`, the shorter one is rounded, zero bands around it
                s = max(cw, ch) / size
                tw, th = max(1, round(cw / s)), max(1, round(ch / s))
                left = (size - tw) - int(np.floor((size - tw) * 0.5 + 0.5))
                top = (size - th) - int(np.floor((size - th) * 0.5 + 0.5))
                theirs = np.zeros_like(ours)
                small = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_LINEAR)
                theirs[top : top + th, left : left + tw] = small
                a = placement.to_source(run(ours[None]))
                b = run(theirs[None])
                b = np.stack(  # cv2.resize: destination u samples (u + 0.5) * in/out - 0.5
                    [
                        (b[:, 0] - left + 0.5) * (cw / tw) - 0.5,
                        (b[:, 1] - top + 0.5) * (ch / th) - 0.5,
                    ],
                    axis=1,
                )
                distance = np.linalg.norm(a - b, axis=1).mean()
                eyes = np.linalg.norm(a[36:42].mean(axis=0) - a[42:48].mean(axis=0))
                shares.append(distance / eyes)
                pixels.append(distance)
                print(
                    f"{path.name:22s} x{scale:<4} crop {cw}x{ch}: {distance:.3f} px, "
                    f"{100 * distance / eyes:.2f} % of the eye distance"
                )
    for runner in runners.values():
        runner.backend.close()
    print(
        f"{len(shares)} faces: mean {np.mean(pixels):.3f} px, "
        f"{100 * np.mean(shares):.2f} % of the eye distance (max {100 * np.max(shares):.2f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
