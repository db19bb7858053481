"""Everything MQTT for one agent, assembled from the configuration: the publisher
(events and telemetry through the outbox, status), remote commands and, when
enabled, Home Assistant discovery. The daemon drives it (docs/mqtt.md)."""

import logging
from typing import Any, Optional

from agent.config import AgentConfig
from agent.mqtt.commands import AgentControl, CommandDispatcher, Rebuild
from agent.mqtt.publisher import Publisher
from agent.telemetry.models import TelemetryMessage


class MqttService:
    def __init__(
        self,
        config: AgentConfig,
        *,
        rebuild: Optional[Rebuild] = None,
        logger: Optional[logging.Logger] = None,
        **connection: Any,
    ) -> None:
        self.config = config
        self.rebuild = rebuild
        self._log = logger or logging.getLogger("emotion_agent.mqtt")
        self.publisher = Publisher.from_config(config, logger=logger, **connection)
        self.commands: Optional[CommandDispatcher] = None
        if config.mqtt.discovery.enabled:
            from agent.mqtt.discovery import Discovery

            Discovery(config, self.publisher).install()

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
