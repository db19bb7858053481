"""The loop of several cameras: one set of engines, batches across cameras.

Each round takes the newest frame of the cameras that have one ready (at most
``capacity``: the detector's batch; when more are ready, :class:`FairShare` picks by
weight), drops a frame older than ``stale_after_s`` (counted per camera), then:

- detection on the frames due for it, all cameras' in one batch
  (:meth:`Perception.detect_batch`, each with its camera's thresholds);
- tracking per camera (each camera is a :class:`Loop` "lane": its tracker, smoother,
  settings, metrics and camera id; :meth:`Loop.begin`);
- landmarks on every face of every frame in one batch, then emotion on all of them
  in one batch (:meth:`Perception.landmarks_batch`, :meth:`Perception.classify`);
- smoothing, events, the frame's metrics per camera (:meth:`Loop.complete`).

A camera with no frame holds up nothing: the round goes on with the others (its
tracks still end on time, :meth:`Loop.idle`), and frames are taken as they come.
A batch's results are each frame's own: tests compare every event with the frames
run one at a time.
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from agent.capture.ring import Frame, FrameRing
from agent.perception.faces import EmotionResult
from agent.perception.frame import Box, Perception, PerceptionSettings
from agent.realtime.fairness import FairShare
from agent.realtime.loop import Loop, Pending
from agent.realtime.metrics import PipelineMetrics, Window

log = logging.getLogger("emotion_agent.realtime")

IDLE_EVERY_S = 0.25  # a camera without frames: its tracks are checked this often


@dataclass
class Lane:
    """One camera in the loop: its ring, its :class:`Loop` (tracks, events, metrics)
    and its detection thresholds."""

    id: str
    ring: FrameRing
    loop: Loop
    detection: PerceptionSettings
    weight: float = 1.0
    stale: int = 0  # frames taken too late, dropped
    ended: bool = False  # its source ended (a file that does not loop)
    last_idle: float = 0.0
    min_period_s: float = 0.0  # pipeline.max_fps: the least time between two frames taken
    last_taken: Optional[float] = None


def _served_at(loop: Loop) -> float:
    """When the secondary stage last took a crop of this camera (-inf: never)."""
    return float("-inf") if loop.secondary_at is None else loop.secondary_at


@dataclass(frozen=True)
class CameraCounts:
    """One camera's counters, as a snapshot."""

    id: str
    frames_processed: int
    frames_dropped: int  # replaced in its ring by a newer frame before the loop took it
    frames_stale: int  # taken older than stale_after_s, dropped
    faces: int
    events: int
    fps: Optional[float]
    latency_ms_p50: Optional[float]
    latency_ms_p95: Optional[float]


class MultiLoop:
    def __init__(
        self,
        perception: Perception,
        lanes: Sequence[Lane],
        metrics: PipelineMetrics,
        capacity: int,
        wake: threading.Event,
        *,
        stale_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: Callable[[], None] = lambda: None,
        overlap: bool = False,
    ) -> None:
        """``capacity``: most frames per round (the detector's batch); ``wake``: set when
        any ring has a frame (agent/capture/cameras.py); ``overlap``: :meth:`run`
        detects the next round on its own thread while this one finishes
        (agent/realtime/multi_ahead.py)."""
        self.overlap = overlap
        self._detect_lock = threading.Lock()  # the detector: one thread at a time
        if not lanes:
            raise ValueError("MultiLoop needs at least one camera")
        self.perception = perception
        self.lanes = list(lanes)
        self.metrics = metrics
        self.capacity = max(1, capacity)
        self.stale_after_s = stale_after_s
        self.share = FairShare({lane.id: lane.weight for lane in self.lanes})
        self.wake = wake
        self._clock = clock
        self._heartbeat = heartbeat
        self._by_id = {lane.id: lane for lane in self.lanes}
        self.rounds = 0
        self.batch = Window()  # frames per round, as a "duration" (for the mean)

    # -- one round -----------------------------------------------------------------

    def take_round(self) -> List[Tuple[Lane, Frame]]:
        """The frames of the next round (taken from the rings: release them)."""
        now = self._clock()
        ready = [
            lane.id
            for lane in self.lanes
            if not lane.ended
            and lane.ring.depth
            and (lane.last_taken is None or now - lane.last_taken >= lane.min_period_s)
        ]
        taken: List[Tuple[Lane, Frame]] = []
        for name in self.share.choose(ready, self.capacity) if ready else []:
            lane = self._by_id[name]
            frame = lane.ring.take(timeout=0)
            if frame is None:
                continue
            if self._clock() - frame.captured_at > self.stale_after_s:
                lane.stale += 1
                lane.ring.release(frame)
                continue
            lane.last_taken = now
            taken.append((lane, frame))
        return taken

    def step(self) -> int:
        """One round: the frames taken now, through every stage. The frames processed."""
        self.wake.clear()  # before looking: a frame published meanwhile sets it again
        taken = self.take_round()
        now = self._clock()
        served = {lane.id for lane, _ in taken}
        for lane in self.lanes:
            if lane.id not in served and now - lane.last_idle >= IDLE_EVERY_S:
                lane.last_idle = now
                lane.loop.idle()
            if not lane.ended and lane.ring.closed and not lane.ring.depth:
                lane.ended = True
        if not taken:
            return 0
        try:
            return self._process(taken)
        finally:
            for lane, frame in taken:
                lane.ring.release(frame)

    def _process(
        self, taken: List[Tuple[Lane, Frame]], ahead: Optional[Dict[int, List[Box]]] = None
    ) -> int:
        """``ahead``: the boxes of the frames detected one round ahead, by index."""
        clock, m = self._clock, self.metrics
        t0 = clock()
        detected: Dict[int, List[Box]] = dict(ahead or {})
        due = [
            k
            for k, (lane, _) in enumerate(taken)
            if k not in detected and lane.loop.detection_due()
        ]
        if due:
            try:
                with self._detect_lock:
                    found = self.perception.detect_batch(
                        [taken[k][1].image for k in due], [taken[k][0].detection for k in due]
                    )
            except Exception:  # the batch failed: its frames are lost, the loop goes on
                log.exception("detection of %d frames failed", len(due))
                for lane, _ in taken:
                    lane.loop.skip()
                return 0
            detected.update(zip(due, found))
            t1 = clock()
            m.stage("detect", t1, (t1 - t0) * 1000)
        else:
            t1 = t0
        pending: List[Tuple[Lane, Pending]] = []
        for k, (lane, frame) in enumerate(taken):
            try:
                pending.append((lane, lane.loop.begin(frame, detected.get(k))))
            except Exception:
                log.exception("camera %s: frame %d failed", lane.id, frame.index)
        t2 = clock()
        m.stage("track", t2, (t2 - t1) * 1000)
        if not pending:
            return 0
        try:
            faces = self.perception.landmarks_batch([(p.frame.image, p.boxes) for _, p in pending])
            t3 = clock()
            m.stage("landmarks", t3, (t3 - t2) * 1000)
            points = [f[0] for f in faces]
            crops = [f[1] for f in faces]
            emotions = self.perception.classify(
                np.concatenate(points) if points else np.empty((0, 68, 2)),
                np.concatenate(crops) if crops else np.empty((0, 4)),
            )
            t4 = clock()
            m.stage("emotion", t4, (t4 - t3) * 1000)
            results = []
            at = 0
            for lane_points, _, kept in faces:
                results.append(
                    (lane_points, kept, emotions[at : at + len(kept)] if emotions else [])
                )
                at += len(kept)
        except Exception:  # the batch failed: each frame alone, so one bad frame costs one
            log.exception("landmarks/emotion of %d frames failed; each frame alone", len(pending))
            results = [self._alone(lane, p) for lane, p in pending]
        done = 0
        # the secondary stage takes one crop at a time for every camera: the camera it
        # served longest ago (or never) asks first, so its slot goes round the cameras
        # whatever the stage's rate (a plain rotation by round aliases with it: at half
        # the round rate, one camera would get every slot); ties rotate by round
        first = self.rounds % len(pending)
        rotated = list(zip(pending, results))
        ordered = sorted(
            rotated[first:] + rotated[:first], key=lambda item: _served_at(item[0][0].loop)
        )
        for (lane, p), result in ordered:
            if result is None:
                continue
            lane_points, kept, mine = result
            n = len(kept)
            try:
                lane.loop.complete(p, lane_points, kept, mine)
            except Exception:
                log.exception("camera %s: frame %d failed", lane.id, p.frame.index)
                continue
            end = clock()
            m.frames_processed += 1
            m.faces += n
            m.frame.add(end, (end - p.frame.captured_at) * 1000)
            m.process.add(end, (end - t0) * 1000)
            done += 1
        self.rounds += 1
        self.batch.add(clock(), float(len(taken)))
        self._heartbeat()
        return done

    def _alone(
        self, lane: Lane, p: Pending
    ) -> Optional[Tuple[np.ndarray, List[int], List[EmotionResult]]]:
        """One frame's landmarks and emotions on their own (after a failed batch)."""
        try:
            points, crops, kept = self.perception.landmarks(p.frame.image, p.boxes)
            return points, kept, self.perception.classify(points, crops)
        except Exception:
            log.exception("camera %s: frame %d failed", lane.id, p.frame.index)
            return None

    # -- the loop ------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Every camera's source ended."""
        return all(lane.ended for lane in self.lanes)

    def run(
        self,
        stop: threading.Event,
        max_frames: Optional[int] = None,
        wait_s: float = 0.05,
    ) -> int:
        """Rounds until ``stop`` is set, every source ended, or ``max_frames`` (all
        cameras together)."""
        if self.overlap:
            return self._run_overlapped(stop, max_frames)
        processed = 0
        while not stop.is_set() and not self.ended:
            done = self.step()
            processed += done
            if max_frames is not None and processed >= max_frames:
                break
            if done == 0:  # nothing ready, or only cameras held back by max_fps
                self.wake.wait(wait_s)
                self._heartbeat()
        for lane in self.lanes:
            lane.loop.finish()
        return processed

    def _idle_others(self, served: Set[str]) -> None:
        now = self._clock()
        for lane in self.lanes:
            if lane.id not in served and now - lane.last_idle >= IDLE_EVERY_S:
                lane.last_idle = now
                lane.loop.idle()

    def _run_overlapped(self, stop: threading.Event, max_frames: Optional[int]) -> int:
        """:meth:`run` with the next round detected on its own thread."""
        from agent.realtime.multi_ahead import RoundsAhead

        ahead = RoundsAhead(self, self._detect_lock, clock=self._clock)
        processed = 0
        ahead.start()
        try:
            while not stop.is_set():
                item = ahead.take(timeout=0.5)
                if item is None:
                    if ahead.ended:  # every source ended, or capture stopped
                        break
                    if not ahead.alive:
                        raise RuntimeError("the detection thread ended unexpectedly")
                    if not ahead.busy:  # no frame came (a hung detector beats nothing)
                        self._idle_others(set())
                        self._heartbeat()
                    continue
                self._idle_others({lane.id for lane, _ in item.taken})
                try:
                    if item.error is not None:
                        for lane, _ in item.taken:
                            lane.loop.skip()
                        log.error("detection of %d frames failed: %s", len(item.taken), item.error)
                        done = 0
                    else:
                        done = self._process(item.taken, item.detected)
                finally:
                    for lane, frame in item.taken:
                        lane.ring.release(frame)
                processed += done
                if max_frames is not None and processed >= max_frames:
                    break
        finally:
            ahead.stop()
        for lane in self.lanes:
            lane.loop.finish()
        return processed

    def counts(self) -> List[CameraCounts]:
        """Each camera's counters."""
        out = []
        for lane in self.lanes:
            lm = lane.loop.metrics
            pct = lm.frame.percentiles([50, 95]) or [None, None]
            out.append(
                CameraCounts(
                    id=lane.id,
                    frames_processed=lm.frames_processed,
                    frames_dropped=lane.ring.dropped,
                    frames_stale=lane.stale,
                    faces=lm.faces,
                    events=lm.events,
                    fps=lm.frame.rate(),
                    latency_ms_p50=pct[0],
                    latency_ms_p95=pct[1],
                )
            )
        return out
