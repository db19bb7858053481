"""Home Assistant MQTT discovery (opt-in: ``mqtt.discovery.enabled``).

At every connect the agent publishes, retained, one discovery config per sensor
under ``<mqtt.discovery.prefix>/sensor/<node>/<sensor>/config``, where ``<node>`` is
the device id with anything but letters, digits, ``_`` and ``-`` replaced by ``_``.
Each device then appears in Home Assistant with sensors for its current emotion
(from the events), its processing rate and its outbox depth (from the telemetry),
and, with ``pipeline.secondary.enabled``, ``fine_emotion``: the strongest of the 40
fine emotions of the latest ``fine_emotions`` event; available while its status is
"online". With ``cameras:`` each camera also has ``emotion_<camera>`` and
``fps_<camera>``. A broker ACL can confine a device's
discovery publishes with ``pattern write homeassistant/sensor/%u/#``. Devices of
different fleets that share one Home Assistant need distinct ids.
"""

import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agent import __version__
from agent.mqtt.publisher import Publisher
from agent.mqtt.topics import Topics

# Events of both kinds share the events topic: each event sensor takes the kind it
# shows and keeps its state (``this.state``) on the other.
KEEP = " else this.state }}"
EMOTION = "{{ value_json.event.label if value_json.event.type != 'fine_emotions'" + KEEP
FINE_EMOTION = "{{ value_json.event.top[0].label if value_json.event.type == 'fine_emotions'" + KEEP

SENSORS = (
    # name, leaf topic, value template, extra settings
    ("emotion", "events", EMOTION, {"icon": "mdi:emoticon-outline"}),
    (
        "fps",
        "telemetry",
        "{{ value_json.pipeline.fps }}",
        {"unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:speedometer"},
    ),
    (
        "outbox",
        "telemetry",
        "{{ value_json.outbox.depth }}",
        {"unit_of_measurement": "messages", "state_class": "measurement", "icon": "mdi:tray-full"},
    ),
)
# with pipeline.secondary.enabled: the top one of the fine_emotions events
FINE_SENSOR = ("fine_emotion", "events", FINE_EMOTION, {"icon": "mdi:emoticon-happy-outline"})


def camera_sensors(cameras: Sequence[str]) -> List[Tuple[str, str, str, Dict[str, Any]]]:
    """With ``cameras:`` (their ids; empty with one ``camera:``), each camera's own
    sensors: ``emotion_<camera>`` (the label of its latest event; events carry
    ``camera``) and ``fps_<camera>`` (telemetry's ``pipeline.cameras``). The device's
    own sensors stay (its emotion: any camera's)."""
    out: List[Tuple[str, str, str, Dict[str, Any]]] = []
    for cam_id in cameras:
        key = node_id(cam_id)
        emotion = (
            "{{ value_json.event.label if value_json.event.camera == '" + cam_id + "' and "
            "value_json.event.type != 'fine_emotions'" + KEEP
        )
        fps = (
            "{{ (value_json.pipeline.cameras | selectattr('id', 'equalto', '" + cam_id + "') "
            "| map(attribute='fps') | first) }}"
        )
        out.append((f"emotion_{key}", "events", emotion, {"icon": "mdi:emoticon-outline"}))
        out.append(
            (
                f"fps_{key}",
                "telemetry",
                fps,
                {
                    "unit_of_measurement": "fps",
                    "state_class": "measurement",
                    "icon": "mdi:speedometer",
                },
            )
        )
    return out


AVAILABILITY = "{{ 'online' if value_json.state == 'online' else 'offline' }}"


def node_id(device_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", device_id)


def discovery_messages(
    topics: Topics,
    prefix: str,
    *,
    site: Optional[str] = None,
    fine_emotions: bool = False,
    version: str = __version__,
    labels: Optional[Sequence[str]] = None,
    cameras: Sequence[str] = (),
) -> List[Tuple[str, bytes]]:
    """(topic, payload) of every discovery config of the device whose topics are
    ``topics``, under the discovery ``prefix`` (``mqtt.discovery.prefix``); ``site``
    (``device.site``) is its suggested area. With ``labels`` (the emotion vocabulary),
    the emotion sensor is an enum sensor with those options; with ``fine_emotions``
    (``pipeline.secondary.enabled``), a fine_emotion sensor is added."""
    base = topics.base
    node = node_id(topics.device)
    ident = f"emotion_agent_{node_id(topics.fleet)}_{node}"
    ha_device: Dict[str, Any] = {
        "identifiers": [ident],
        "name": topics.device,
        "manufacturer": "emotion-agent",
        "model": "emotion-agent",
        "sw_version": version,
    }
    if site:
        ha_device["suggested_area"] = site
    out = []
    sensors = list(SENSORS)
    if fine_emotions:
        sensors.append(FINE_SENSOR)
    sensors += camera_sensors(cameras)
    for name, leaf, template, extra in sensors:
        payload = {
            "name": name,
            "unique_id": f"{ident}_{name}",
            "object_id": f"{node}_{name}",
            "state_topic": f"{base}/{leaf}",
            "value_template": template,
            "availability_topic": f"{base}/status",
            "availability_template": AVAILABILITY,
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": 1,
            "device": ha_device,
            **extra,
        }
        if (name == "emotion" or name.startswith("emotion_")) and labels:
            payload.update({"device_class": "enum", "options": list(labels)})
        topic = f"{prefix}/sensor/{node}/{name}/config"
        out.append((topic, json.dumps(payload, separators=(",", ":")).encode("utf-8")))
    return out


class Discovery:
    """Publishes the discovery configs at every connect of ``publisher`` (its topics,
    site and version), under ``prefix``; ``labels``, ``fine_emotions`` and ``cameras`` as for
    :func:`discovery_messages` (no labels: the emotion sensor is a text sensor)."""

    def __init__(
        self,
        publisher: Publisher,
        prefix: str,
        *,
        labels: Optional[Sequence[str]] = None,
        fine_emotions: bool = False,
        cameras: Sequence[str] = (),
    ) -> None:
        self.messages = discovery_messages(
            publisher.topics,
            prefix,
            site=publisher.site,
            fine_emotions=fine_emotions,
            version=publisher.version,
            labels=labels,
            cameras=cameras,
        )
        self.publisher = publisher

    def install(self) -> None:
        self.publisher.on_connected_hooks.append(self.publish)

    def publish(self) -> None:  # network thread (on connect)
        for topic, payload in self.messages:
            self.publisher.connection.publish_now(topic, payload, qos=1, retain=True)
