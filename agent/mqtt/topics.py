"""The MQTT topic tree: one subtree per device, so that a broker ACL can confine it.

    <prefix>/<fleet>/<device>/status                 retained: online / offline (will) / stopped
    <prefix>/<fleet>/<device>/events                 emotion events, QoS 1, with a sequence number
    <prefix>/<fleet>/<device>/telemetry              health and performance, periodic, QoS 1
    <prefix>/<fleet>/<device>/cmd/<name>             commands in
    <prefix>/<fleet>/<device>/cmd/<name>/response    responses out (default; see commands.py)

``prefix`` is ``mqtt.topic_prefix``; ``fleet`` and ``device`` are ``device.fleet`` and
``device.id``, which the configuration restricts to topic-safe names (no '/', '+', '#').
"""

from dataclasses import dataclass
from typing import Optional, Tuple

COMMAND_LEVEL = "cmd"
RESPONSE_LEVEL = "response"


@dataclass(frozen=True)
class Topics:
    prefix: str
    fleet: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.fleet}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def commands(self) -> str:
        """The filter the device subscribes to: every command, no responses."""
        return f"{self.base}/{COMMAND_LEVEL}/+"

    def command(self, name: str) -> str:
        return f"{self.base}/{COMMAND_LEVEL}/{name}"

    def response(self, name: str) -> str:
        return f"{self.base}/{COMMAND_LEVEL}/{name}/{RESPONSE_LEVEL}"

    def command_name(self, topic: str) -> Optional[str]:
        """The command name of a request topic of this device, else None."""
        head = f"{self.base}/{COMMAND_LEVEL}/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None

    def allowed_response_topic(self, name: str, topic: str) -> bool:
        """A requester may pick its response topic, but only below this command's
        response topic: the device never publishes outside its subtree, and a
        request cannot make it publish on its own status, events or telemetry."""
        default = self.response(name)
        if topic == default:
            return True
        if not topic.startswith(default + "/"):
            return False
        rest = topic[len(default) + 1 :]
        return bool(rest) and "+" not in rest and "#" not in rest and "\0" not in rest


def fleet_filter(prefix: str, fleet: str, leaf: str) -> str:
    """Subscription filter for one kind of message of every device of a fleet."""
    return f"{prefix}/{fleet}/+/{leaf}"


def split_device_topic(prefix: str, topic: str) -> Optional[Tuple[str, str, str]]:
    """(fleet, device, rest) of a topic under ``prefix``, else None."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]
