"""``emotion-agent analyze PATH... [--json] [--draw DIR]``."""

import argparse
import functools
import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from agent.analyze import AnalyzeOptions, InputError, analyze_file
from agent.cli.context import CliContext
from agent.cli.exit_codes import EXIT_FAILURE
from agent.cli.progress import FrameProgress
from agent.perception.factory import build_perception
from agent.perception.runners import onnxruntime_runner
from agent.perception.video import OpenCVMissing
from engines.manifest import ManifestError, ModelIntegrityError


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="detect faces, landmarks and emotions in image and video files",
        description=(
            "Run face detection -> 68 landmarks -> emotion on image files and video files "
            "(every Nth frame) with ONNX Runtime on the CPU, using the models of the "
            "configuration (models.*). A missing or unreadable file gets an error line and "
            "the others go on; the exit code is 1 if any input failed."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image or video files")
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per input per line: {path, width, height, faces: [{bbox, score, "
        "landmarks, emotion}]}; videos have frames: [{index, time_s, faces}] instead of faces; "
        "a failed input is {path, error}",
    )
    parser.add_argument(
        "--draw",
        metavar="DIR",
        type=Path,
        help="write annotated copies to DIR (boxes, 68 landmarks, label boxes: '#1 happiness "
        "84%%, face 97%%' is face 1, its emotion and that emotion's probability, then the "
        "detector's confidence): NAME.jpg for an image, NAME.mp4 for a video (every frame "
        "at the video's frame rate; between analysed frames the last results are drawn)",
    )
    parser.add_argument(
        "--every",
        metavar="N",
        type=int,
        default=10,
        help="videos: analyse every Nth frame (default: 10)",
    )
    parser.add_argument(
        "--max-frames", metavar="K", type=int, help="videos: stop after K analysed frames"
    )
    common(parser)
    parser.set_defaults(handler=_analyze)


def _table(result: Dict[str, Any]) -> str:
    def faces_lines(faces: Any, indent: str) -> list:
        lines = []
        for i, face in enumerate(faces):
            x1, y1, x2, y2 = (round(v) for v in face["bbox"])
            # as the drawn labels say it: face #, box, detector confidence, then the
            # emotion with its probability and the next two
            text = f"{indent}#{i + 1} box {x1},{y1}-{x2},{y2} face {face['score']:.0%}"
            emotion = face["emotion"]
            if emotion:
                ranked = sorted(emotion["scores"].items(), key=lambda kv: -kv[1])
                rest = ", ".join(f"{k} {v:.0%}" for k, v in ranked[1:3])
                text += f": {emotion['label']} {ranked[0][1]:.0%} (then {rest})"
            lines.append(text)
        return lines

    head = f"{result['path']} ({result['width']}x{result['height']})"
    if "faces" in result:
        n = len(result["faces"])
        lines = [f"{head}: {n} face{'s' if n != 1 else ''}"]
        lines += faces_lines(result["faces"], "  ")
        return "\n".join(lines)
    lines = [f"{head}: {len(result['frames'])} frames analysed"]
    for frame in result["frames"]:
        n = len(frame["faces"])
        when = f" t={frame['time_s']:.2f}s" if frame["time_s"] is not None else ""
        lines.append(f"  frame {frame['index']}{when}: {n} face{'s' if n != 1 else ''}")
        lines += faces_lines(frame["faces"], "    ")
    return "\n".join(lines)


def _tick(progress: FrameProgress, done: int, total: Optional[int]) -> None:
    progress.total = total
    progress.update(done)


def _analyze(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.every < 1:
        print("emotion-agent analyze: --every must be >= 1", file=ctx.stderr)
        return 2
    config = ctx.load().config
    try:
        perception = build_perception(
            config.models, config.pipeline, onnxruntime_runner(config.models.onnxruntime_threads)
        )
    except (ManifestError, ModelIntegrityError, OpenCVMissing) as exc:
        print(f"emotion-agent analyze: {exc}", file=ctx.stderr)
        return EXIT_FAILURE
    options = AnalyzeOptions(every_n=args.every, max_frames=args.max_frames, draw_dir=args.draw)
    failed = 0
    for raw in args.paths:
        path = Path(raw)
        # frames done / total, frames/s, ETA for a video, on a terminal only
        progress = FrameProgress(ctx.stderr, path.name)
        try:
            result = analyze_file(path, perception, options, functools.partial(_tick, progress))
        except (InputError, OpenCVMissing) as exc:
            progress.finish()
            failed += 1
            print(f"emotion-agent analyze: {raw}: {exc}", file=ctx.stderr)
            if args.json:
                print(json.dumps({"path": raw, "error": str(exc)}), file=ctx.stdout)
            continue
        progress.finish()
        if args.json:
            print(json.dumps(result), file=ctx.stdout)
        else:
            print(_table(result), file=ctx.stdout)
        ctx.stdout.flush()
        if "drawn" in result:
            print(f"emotion-agent analyze: {raw}: drawn to {result['drawn']}", file=ctx.stderr)
    if failed:
        print(
            f"emotion-agent analyze: {failed} of {len(args.paths)} inputs failed", file=ctx.stderr
        )
        return EXIT_FAILURE
    return 0
