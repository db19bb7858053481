"""Where events go. The MQTT publisher is one sink; JSON lines (stdout or a file) another."""

import threading
from pathlib import Path
from typing import IO, Optional, Protocol, Sequence

from agent.events.fine import AnyEvent


class EventSink(Protocol):
    def emit(self, event: AnyEvent) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line, flushed per event (stdout, or appended to a file)."""

    def __init__(self, stream: Optional[IO[str]] = None, path: Optional[Path] = None) -> None:
        if (stream is None) == (path is None):
            raise ValueError("give a stream or a path")
        self._owned = stream is None
        self._stream: IO[str] = stream if stream is not None else open(path, "a", encoding="utf-8")  # type: ignore[arg-type]  # noqa: SIM115
        self._lock = threading.Lock()
        self.count = 0

    def emit(self, event: AnyEvent) -> None:
        line = event.model_dump_json(exclude_none=True)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
            self.count += 1

    def close(self) -> None:
        if self._owned:
            self._stream.close()


class CountingSink:
    """Counts events and keeps none (bench: the events are the work, not the output).
    Several cameras' loops emit from one thread, so a plain counter is enough."""

    def __init__(self) -> None:
        self.count = 0

    def emit(self, event: AnyEvent) -> None:
        self.count += 1

    def close(self) -> None:
        pass


class TeeSink:
    """Every event to several sinks (the MQTT publisher and a JSON lines file)."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)

    def emit(self, event: AnyEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def flush(self) -> None:
        for sink in self.sinks:
            flush = getattr(sink, "flush", None)
            if flush is not None:
                flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
