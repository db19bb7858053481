"""The real-time loop: take the newest frame, detect (every Nth frame), track,
landmarks and emotion for every tracked face in one batch, smooth, emit events.

With ``overlap`` (``pipeline.overlap_detection``, the default) the detector runs
one frame ahead on its own thread (:mod:`agent.realtime.detect_ahead`) while this loop
finishes the frame before; without it, each frame goes through every stage
before the next is taken.

Everything it needs is injected (perception, ring, tracker, smoother, sink,
clocks, metrics), so tests drive it frame by frame with ``step`` and the daemon
runs it with ``run``.
"""

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional

import numpy as np

from agent.capture.ring import Frame, FrameRing
from agent.events.fine import FineEmotion, FineEmotionsEvent
from agent.events.models import EmotionEvent
from agent.events.sinks import EventSink
from agent.perception.faces import EmotionResult
from agent.perception.frame import Box, Perception
from agent.realtime.detect_ahead import DetectAhead
from agent.realtime.metrics import PipelineMetrics
from agent.realtime.secondary import SecondaryResult, SecondaryWorker, square_crop, top_k
from agent.tracking.smoothing import EmotionSmoother
from agent.tracking.tracker import IoUTracker, Track, TrackUpdate

log = logging.getLogger("emotion_agent.realtime")


@dataclass
class Pending:
    """A frame between the loop's two halves (:meth:`Loop.begin`, :meth:`Loop.complete`):
    tracked, waiting for its landmarks and emotions (which several cameras' frames get
    in one batch, agent/realtime/multi.py)."""

    frame: Frame
    boxes: List[Box]
    update: TrackUpdate
    seen: List[Track]
    started: float  # the clock when the loop began the frame


@dataclass(frozen=True)
class LoopSettings:
    detect_every_n: int = 1
    summary_interval_s: float = 0.0
    max_fps: Optional[float] = None
    overlap: bool = False  # detect the next frame while this one finishes


class Loop:
    def __init__(
        self,
        perception: Perception,
        tracker: IoUTracker,
        smoother: EmotionSmoother,
        sink: EventSink,
        settings: LoopSettings = LoopSettings(),
        metrics: Optional[PipelineMetrics] = None,
        secondary: Optional[SecondaryWorker] = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_frame: Optional[Callable[[Frame, List[Track]], None]] = None,
        heartbeat: Callable[[], None] = lambda: None,
        camera: Optional[str] = None,
    ) -> None:
        """``camera``: the camera id its events carry (None: one camera, no id)."""
        self.camera = camera
        self.perception = perception
        self.tracker = tracker
        self.smoother = smoother
        self.sink = sink
        self.settings = settings
        self.metrics = metrics or PipelineMetrics()
        self.secondary = secondary
        self._clock = clock
        self._wall = wall_clock
        self._on_frame = on_frame
        self._heartbeat = heartbeat
        self._frames = 0
        self._last_frame_at: Optional[float] = None
        # when this camera's crop was last taken by the secondary stage (None: never);
        # with several cameras sharing one worker, the one served longest ago asks first
        self.secondary_at: Optional[float] = None

    # -- events ------------------------------------------------------------------

    def _timestamp(self, captured_at: float) -> datetime:
        lag = max(0.0, self._clock() - captured_at)
        return datetime.fromtimestamp(self._wall() - lag, tz=timezone.utc)

    def _emit(self, kind: str, track: Track, frame_index: int, captured_at: float, **extra) -> None:
        latency_ms = max(0.0, (self._clock() - captured_at) * 1000.0)
        self._send(kind, track, frame_index, captured_at, latency_ms, **extra)

    def _end(self, track: Track, at: float) -> None:
        """``end``: the last frame the track was seen in; no latency (no frame was
        captured for it: it ends because time passed, or at shutdown)."""
        self._send("end", track, track.last_frame, at, None)

    def _send(
        self,
        kind: str,
        track: Track,
        frame_index: int,
        captured_at: float,
        latency_ms: Optional[float],
        **extra,
    ) -> None:
        confidence = self.smoother.confidence(track)
        event = EmotionEvent(
            type=kind,  # type: ignore[arg-type]
            track_id=track.id,
            timestamp=self._timestamp(captured_at),
            label=self.smoother.label(track),  # the argmax of the scores beside it
            confidence=None if confidence is None else round(confidence, 4),  # as scores
            scores=self.smoother.scores(track),
            bbox=[round(float(v), 1) for v in track.bbox],
            frame_index=frame_index,
            duration_s=round(max(0.0, track.last_seen - track.first_seen), 3),
            latency_ms=None if latency_ms is None else round(latency_ms, 2),
            camera=self.camera,
            **extra,
        )
        self.sink.emit(event)
        self.metrics.events += 1
        if latency_ms is not None:
            self.metrics.event.add(self._clock(), latency_ms)

    # -- one frame -----------------------------------------------------------------

    def _detection_due(self, index: int) -> bool:
        """Whether frame ``index`` (counted from the loop's first) is detected: every
        ``detect_every_n`` th, and every frame while no face is tracked."""
        return index % self.settings.detect_every_n == 0 or not self.tracker.tracks

    def step(self, frame: Frame, detected: Optional[List[Box]] = None) -> List[Track]:
        """Process one frame; return the tracks seen in it. ``detected``: the frame's
        boxes when the detector already ran on it (one frame ahead)."""
        pending = self.begin(frame, detected)
        clock, m = self._clock, self.metrics
        t3 = clock()
        points, crops, kept = self.perception.landmarks(frame.image, pending.boxes)
        t4 = clock()
        m.stage("landmarks", t4, (t4 - t3) * 1000)
        emotions = self.perception.classify(points, crops)
        t5 = clock()
        m.stage("emotion", t5, (t5 - t4) * 1000)
        return self.complete(pending, points, kept, emotions)

    @property
    def frames(self) -> int:
        """Frames begun (or counted by :meth:`skip`) since the start."""
        return self._frames

    def skip(self) -> None:
        """Count a frame that failed before :meth:`begin` (its detection, run
        elsewhere), so that every ``detect_every_n``th frame stays the one detected."""
        self._frames += 1

    def detection_due(self) -> bool:
        """Whether the next frame :meth:`begin` gets is to be detected."""
        return self._detection_due(self._frames)

    def begin(self, frame: Frame, detected: Optional[List[Box]] = None) -> Pending:
        """The first half of :meth:`step`: detection (unless ``detected`` gives its
        boxes, or it is not due) and tracking."""
        clock, m = self._clock, self.metrics
        image, now = frame.image, frame.captured_at
        detect = detected is not None or self._detection_due(self._frames)
        self._frames += 1

        t0 = clock()
        if detect:
            if detected is None:
                boxes = self.perception.detect(image)
                t1 = clock()
                m.stage("detect", t1, (t1 - t0) * 1000)
            else:  # the detect stage was timed on the thread that ran it
                boxes, t1 = detected, t0
            update = self.tracker.update(boxes, now)
            for track, _ in update.matched:
                track.last_frame = frame.index
            t2 = clock()
            m.stage("track", t2, (t2 - t1) * 1000)
        else:  # between detections the tracks keep their last boxes
            boxes = [(*t.bbox, t.score) for t in self.tracker.tracks]
            update = TrackUpdate([(t, i) for i, t in enumerate(self.tracker.tracks)], [], [])
            update.ended.extend(self.tracker.expire(now))
        seen = [track for track, _ in update.matched]
        return Pending(frame, boxes, update, seen, t0)

    def complete(
        self,
        pending: Pending,
        points: np.ndarray,
        kept: List[int],
        emotions: List[EmotionResult],
    ) -> List[Track]:
        """The second half of :meth:`step`, with the frame's landmarks and emotions:
        smoothing, events, the secondary stage, the frame's metrics."""
        clock, m = self._clock, self.metrics
        frame, update, seen = pending.frame, pending.update, pending.seen
        by_detection: Dict[int, Track] = {i: track for track, i in update.matched}
        changes = []
        for k, det_index in enumerate(kept):
            track = by_detection.get(det_index)
            if track is None:
                continue
            track.landmarks = points[k]
            if emotions:
                probs = [emotions[k].scores[label] for label in self.smoother.labels]
                change = self.smoother.observe(track, probs)
                if change is not None and track.confirmed and track not in update.confirmed:
                    changes.append((track, change[0]))
        for track in update.confirmed:
            self._emit("new", track, frame.index, frame.captured_at)
        for track, previous in changes:
            self._emit("update", track, frame.index, frame.captured_at, previous_label=previous)
        for track in update.ended:
            self._end(track, frame.captured_at)
        self._summaries(frame.captured_at, frame)
        self._secondary(frame.image, seen, frame)

        done = clock()
        m.frames_processed += 1
        m.faces += len(kept)
        m.frame.add(done, (done - frame.captured_at) * 1000)
        m.process.add(done, (done - pending.started) * 1000)
        self._heartbeat()
        if self._on_frame is not None:
            self._on_frame(frame, seen)
        return seen

    def _summaries(self, now: float, frame: Frame) -> None:
        interval = self.settings.summary_interval_s
        if interval <= 0:
            return
        for track in self.tracker.tracks:
            if track.confirmed and now - track.last_summary >= interval:
                if track.last_summary > 0:
                    self._emit("summary", track, frame.index, frame.captured_at)
                track.last_summary = now

    def _secondary(self, image: np.ndarray, seen: List[Track], frame: Frame) -> None:
        worker = self.secondary
        if worker is None:
            return
        for result in worker.results():
            self._emit_fine(worker, result)
        candidates = [t for t in seen if t.confirmed]
        if candidates and worker.wants():
            # the track that waited longest since its last secondary run goes first
            track = min(candidates, key=lambda t: t.last_secondary)
            made = square_crop(image, track.bbox, worker.settings.margin)
            if made is None:
                return
            crop, square = made
            if worker.offer(
                track.id, crop, frame.captured_at, frame.index, square, camera=self.camera
            ):
                track.last_secondary = self.secondary_at = self._clock()

    def _emit_fine(self, worker: SecondaryWorker, result: SecondaryResult) -> None:
        """A secondary result as a ``fine_emotions`` event (the track may have ended:
        the result is still about that face at that time)."""
        settings = worker.settings
        latency_ms = max(0.0, (self._clock() - result.captured_at) * 1000.0)
        event = FineEmotionsEvent(
            track_id=result.track_id,
            timestamp=self._timestamp(result.captured_at),
            frame_index=result.frame_index,
            model=worker.name,
            top=[
                FineEmotion(label=label, intensity=round(float(v), 4))
                for label, v in top_k(result.scores, settings.top_k)
            ],
            scores=(
                {k: round(float(v), 4) for k, v in result.scores.items()}
                if settings.publish_all
                else None
            ),
            bbox=[round(float(v), 1) for v in result.bbox],
            inference_ms=round(result.inference_ms, 2),
            latency_ms=round(latency_ms, 2),
            # with several cameras the worker is shared: the result names its camera
            camera=result.camera if result.camera is not None else self.camera,
        )
        self.sink.emit(event)
        self.metrics.events += 1

    def idle(self) -> None:
        """No frame came: still end tracks that timed out."""
        now = self._clock()
        for track in self.tracker.expire(now):
            self._end(track, now)
        self._heartbeat()

    def finish(self) -> None:
        """Shutdown: end every confirmed track."""
        now = self._clock()
        for track in self.tracker.end_all():
            self._end(track, now)

    # -- the loop --------------------------------------------------------------------

    def run(
        self,
        ring: FrameRing,
        stop: threading.Event,
        max_frames: Optional[int] = None,
        sleep: Callable[[float], None] = time.sleep,
        overlap: Optional[bool] = None,
    ) -> int:
        """Process frames until ``stop`` is set, the source ends, or ``max_frames``.
        ``overlap`` overrides the settings' (the benchmark's reference pass)."""
        if self.settings.overlap if overlap is None else overlap:
            return self._run_overlapped(ring, stop, max_frames, sleep)
        processed = 0
        min_period = 1.0 / self.settings.max_fps if self.settings.max_fps else 0.0
        while not stop.is_set():
            frame = ring.take(timeout=0.5)
            if frame is None:
                if ring.closed:  # the source ended (file without loop) or capture stopped
                    break
                self.idle()
                continue
            try:
                self.step(frame)
            except Exception:  # one bad frame must not end the loop
                log.exception("frame %d failed", frame.index)
            finally:
                ring.release(frame)
            processed += 1
            if max_frames is not None and processed >= max_frames:
                break
            if min_period:
                spent = self._clock() - (self._last_frame_at or self._clock())
                if spent < min_period:
                    sleep(min_period - spent)
                self._last_frame_at = self._clock()
        self.finish()
        return processed

    def _run_overlapped(
        self,
        ring: FrameRing,
        stop: threading.Event,
        max_frames: Optional[int],
        sleep: Callable[[float], None],
    ) -> int:
        """``run`` with the detector one frame ahead, on its own thread."""
        first, every = self._frames, self.settings.detect_every_n
        ahead = DetectAhead(
            ring,
            self.perception.detect,
            # the frames due whatever the tracks: whether another one is (no track
            # left) is known only once the frame before it is done; step decides
            lambda k: (first + k) % every == 0,
            record=lambda at, ms: self.metrics.stage("detect", at, ms),
            clock=self._clock,
            min_period_s=1.0 / self.settings.max_fps if self.settings.max_fps else 0.0,
            sleep=sleep,
        )
        processed = 0
        ahead.start()
        try:
            while not stop.is_set():
                item = ahead.take(timeout=0.5)
                if item is None:
                    if ahead.ended:  # the source ended or capture stopped
                        break
                    if not ahead.alive:
                        raise RuntimeError("the detection thread ended unexpectedly")
                    if not ahead.busy:  # no frame came (a hung detector beats nothing)
                        self.idle()
                    continue
                try:
                    if item.error is not None:
                        self._frames += 1  # counted as step counts a frame that fails
                        raise item.error
                    self.step(item.frame, item.boxes)
                except Exception:  # one bad frame must not end the loop
                    log.exception("frame %d failed", item.frame.index)
                finally:
                    ring.release(item.frame)
                processed += 1
                if max_frames is not None and processed >= max_frames:
                    break
        finally:
            ahead.stop()
        self.finish()
        return processed
