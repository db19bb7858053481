"""The reduced-rate secondary stage: a heavier model on selected face crops.

The SigLIP2 emotion heads (40 fine-grained emotions) plug in here. A
:class:`SecondaryWorker` runs the model on its own thread, at most ``rate_hz``
times a second, on the newest crop it was offered; offering never blocks the
main loop (a crop offered while the worker is busy or too soon is refused).
"""

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

# one BGR face crop -> label scores
SecondaryModel = Callable[[np.ndarray], Dict[str, float]]

log = logging.getLogger("emotion_agent.pipeline.secondary")


class SecondaryWorker:
    def __init__(
        self,
        model: SecondaryModel,
        rate_hz: float,
        clock: Callable[[], float] = time.monotonic,
        top_k: int = 5,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        self._model = model
        self._interval = 1.0 / rate_hz
        self._clock = clock
        self._top_k = top_k
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._job: Optional[Tuple[int, np.ndarray]] = None
        self._busy = False
        self._last_start: Optional[float] = None
        self._results: List[Tuple[int, Dict[str, float]]] = []
        self.runs = 0
        self.refused = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="secondary", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, track_id: int, crop: np.ndarray) -> bool:
        """Hand a crop to the worker if it is idle and the rate allows; never blocks."""
        now = self._clock()
        with self._lock:
            too_soon = self._last_start is not None and now - self._last_start < self._interval
            if self._busy or self._job is not None or too_soon:
                self.refused += 1
                return False
            self._job = (track_id, np.array(crop, copy=True))
            self._last_start = now
        self._wake.set()
        return True

    def results(self) -> List[Tuple[int, Dict[str, float]]]:
        """Results finished since the last call: (track id, top-k scores)."""
        with self._lock:
            out, self._results = self._results, []
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                job, self._job = self._job, None
                self._busy = job is not None
            if job is None:
                continue
            track_id, crop = job
            try:
                scores = self._model(crop)
                top = sorted(scores.items(), key=lambda kv: -kv[1])[: self._top_k]
                with self._lock:
                    self._results.append((track_id, {k: round(float(v), 4) for k, v in top}))
                    self.runs += 1
            except Exception:  # a failing model must not stop the worker or the loop
                self.errors += 1
                log.exception("secondary model failed")
            finally:
                with self._lock:
                    self._busy = False

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
