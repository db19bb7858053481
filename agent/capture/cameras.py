"""Several cameras: one source, frame ring and capture thread per camera.

Each camera keeps what one camera has (agent/capture/thread.py): its own thread,
its own reconnect backoff, its own state; a camera that fails or hangs holds up
nothing but itself. Every ring wakes one shared signal when it has a frame (or
closes), so that the loop of all cameras (agent/realtime/multi.py) waits on one
thing instead of polling.
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from agent.capture.ring import FrameRing
from agent.capture.sources import Source
from agent.capture.thread import Backoff, CaptureState, CaptureThread

log = logging.getLogger("emotion_agent.capture")


@dataclass
class Camera:
    """One camera's capture side."""

    id: str
    source: Source
    ring: FrameRing
    capture: CaptureThread
    states: List[CaptureState] = field(default_factory=list)

    @property
    def state(self) -> CaptureState:
        return self.capture.state


@dataclass(frozen=True)
class CameraSpec:
    """What :class:`CameraSet` needs to know of one camera."""

    id: str
    source: Source
    reconnect_initial_s: float
    reconnect_max_s: float


class CameraSet:
    def __init__(
        self,
        specs: List[CameraSpec],
        *,
        slots: int = 3,
        lossless: bool = False,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: Callable[[], None] = lambda: None,
        on_state: Optional[Callable[[str, CaptureState], None]] = None,
    ) -> None:
        """``heartbeat``: every camera's capture beats it (the watchdog's ``capture``
        stage then stalls only when no camera makes progress); ``on_state(id, state)``
        on each camera's state changes."""
        self.wake = threading.Event()
        self.cameras: List[Camera] = []
        for spec in specs:
            ring = FrameRing(slots, lossless=lossless, on_ready=self.wake.set)
            camera = Camera(spec.id, spec.source, ring, None)  # type: ignore[arg-type]
            camera.capture = CaptureThread(
                spec.source,
                ring,
                Backoff(spec.reconnect_initial_s, spec.reconnect_max_s),
                on_state=self._state_changed(camera, on_state),
                clock=clock,
                heartbeat=heartbeat,
            )
            camera.capture.name = f"capture-{spec.id}"
            self.cameras.append(camera)

    @staticmethod
    def _state_changed(
        camera: Camera, on_state: Optional[Callable[[str, CaptureState], None]]
    ) -> Callable[[CaptureState], None]:
        def changed(state: CaptureState) -> None:
            camera.states.append(state)
            if state.state == "retrying":
                log.warning(
                    "camera %s (%s): %s; retrying in %.1f s (attempt %d)",
                    camera.id,
                    camera.source.uri,
                    state.detail,
                    state.retry_in_s or 0.0,
                    state.attempt,
                )
            else:
                log.info("camera %s (%s): %s %s", camera.id, camera.source.uri, state.state,
                         state.detail)  # fmt: skip
            if on_state is not None:
                on_state(camera.id, state)

        return changed

    def by_id(self) -> Dict[str, Camera]:
        return {camera.id: camera for camera in self.cameras}

    def start(self) -> None:
        for camera in self.cameras:
            camera.capture.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every capture thread (their rings close), then wait for them, sharing
        ``timeout_s``: one hung camera driver does not multiply the wait."""
        for camera in self.cameras:
            camera.capture.stop()
        deadline = time.monotonic() + timeout_s
        for camera in self.cameras:
            camera.capture.join(timeout=max(0.0, deadline - time.monotonic()))
