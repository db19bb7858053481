"""Everything MQTT for one agent, assembled from the ``mqtt`` and ``device`` sections
and ``state_dir``: the publisher (events and telemetry through the outbox, status),
remote commands and, when enabled, Home Assistant discovery. The daemon drives it
(docs/mqtt.md)."""

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

from agent.config.models import DeviceConfig, MQTTConfig
from agent.mqtt.commands import AgentControl, CommandDispatcher, Rebuild
from agent.mqtt.publisher import Publisher
from agent.telemetry.models import TelemetryMessage


class MqttService:
    def __init__(
        self,
        mqtt: MQTTConfig,
        device: DeviceConfig,
        state_dir: Path,
        *,
        labels: Optional[Sequence[str]] = None,
        fine_emotions: bool = False,
        cameras: Sequence[str] = (),
        rebuild: Optional[Rebuild] = None,
        logger: Optional[logging.Logger] = None,
        **connection: Any,
    ) -> None:
        """``labels`` (the emotion vocabulary, ``perception.factory.emotion_labels``) and
        ``fine_emotions`` (``pipeline.secondary.enabled``) are what Home Assistant
        discovery, when ``mqtt.discovery.enabled``, announces of the pipeline; with
        ``cameras:``, ``cameras`` (their ids) adds each camera's own sensors."""
        self.rebuild = rebuild
        self._log = logger or logging.getLogger("emotion_agent.mqtt")
        self.publisher = Publisher.from_sections(
            mqtt, device, state_dir, logger=logger, **connection
        )
        self.commands: Optional[CommandDispatcher] = None
        if mqtt.discovery.enabled:
            from agent.mqtt.discovery import Discovery

            Discovery(
                self.publisher,
                mqtt.discovery.prefix,
                labels=labels,
                fine_emotions=fine_emotions,
                cameras=cameras,
            ).install()

    @property
    def sink(self) -> Publisher:
        return self.publisher

    def attach(self, control: AgentControl) -> None:
        """Take commands for ``control`` (before start: the subscription is made at connect)."""
        self.commands = CommandDispatcher(
            self.publisher.connection,
            self.publisher.topics,
            control,
            rebuild=self.rebuild,
            logger=self._log,
        )

    def start(self) -> "MqttService":
        if self.commands is not None:
            self.commands.start()
        self.publisher.start()
        return self

    def publish_telemetry(self, message: TelemetryMessage) -> None:
        self.publisher.publish_telemetry(message)

    def outbox_depth(self) -> int:
        return self.publisher.outbox.depth

    def set_outbox_heartbeat(self, beat: Callable[[], None]) -> None:
        """Called every round of the outbox's writer (the watchdog sees a hung disk)."""
        self.publisher.outbox.heartbeat = beat

    def outbox_note(self) -> Optional[str]:
        """For STATUS=: what is wrong with the outbox, or None."""
        s = self.publisher.outbox.stats()
        parts = []
        if s.failing:
            parts.append(
                f"outbox FAILING ({s.failing}) for {s.failing_for_s or 0:.0f} s, "
                f"{s.pending}/{s.max_pending} queued in memory"
            )
        if s.pending_dropped:
            parts.append(f"{s.pending_dropped} messages dropped from memory")
        return ", ".join(parts) or None

    def lost_this_run(self) -> Tuple[int, int]:
        """(messages, events) never stored this run; final once the service is closed."""
        return self.publisher.outbox.lost_this_run()

    def flush(self, timeout: Optional[float] = None) -> bool:
        return self.publisher.flush(timeout)

    def publish_stopped(self) -> None:
        if self.commands is not None:
            self.commands.stop()
        if not self.publisher.publish_stopped():
            self._log.info('"stopped" was not acknowledged (no broker connection)')

    def disconnect(self) -> None:
        self.publisher.disconnect()

    def close(self) -> None:
        self.publisher.close()
