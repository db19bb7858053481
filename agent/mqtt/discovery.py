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
from agent.config import AgentConfig
from agent.mqtt.publisher import Publisher
from engines.manifest import ManifestError, load_manifest

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


def camera_sensors(config: AgentConfig) -> List[Tuple[str, str, str, Dict[str, Any]]]:
    """With ``cameras:``, each camera's own sensors: ``emotion_<camera>`` (the label of
    its latest event; events carry ``camera``) and ``fps_<camera>`` (telemetry's
    ``pipeline.cameras``). The device's own sensors stay (its emotion: any camera's)."""
    if not config.multi_camera:
        return []
    out: List[Tuple[str, str, str, Dict[str, Any]]] = []
    for cam in config.camera_entries():
        key = node_id(cam.id)
        emotion = (
            "{{ value_json.event.label if value_json.event.camera == '" + cam.id + "' and "
            "value_json.event.type != 'fine_emotions'" + KEEP
        )
        fps = (
            "{{ (value_json.pipeline.cameras | selectattr('id', 'equalto', '" + cam.id + "') "
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


def emotion_labels(config: AgentConfig) -> Optional[List[str]]:
    """The configured emotion classifier's labels (the manifest's), None if unreadable
    (the pipeline reports that; discovery then announces a plain text sensor)."""
    try:
        return load_manifest(config.models.manifest).emotion_labels(config.models.emotion)
    except ManifestError:
        return None


def discovery_messages(
    config: AgentConfig, version: str = __version__, labels: Optional[Sequence[str]] = None
) -> List[Tuple[str, bytes]]:
    """(topic, payload) of every discovery config of this device. With ``labels`` (the
    emotion vocabulary), the emotion sensor is an enum sensor with those options."""
    device = config.device
    base = f"{config.mqtt.topic_prefix}/{device.fleet}/{device.id}"
    node = node_id(device.id)
    ident = f"emotion_agent_{node_id(device.fleet)}_{node}"
    ha_device: Dict[str, Any] = {
        "identifiers": [ident],
        "name": device.id,
        "manufacturer": "emotion-agent",
        "model": "emotion-agent",
        "sw_version": version,
    }
    if device.site:
        ha_device["suggested_area"] = device.site
    out = []
    sensors = list(SENSORS)
    if config.pipeline.secondary.enabled:
        sensors.append(FINE_SENSOR)
    sensors += camera_sensors(config)
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
        topic = f"{config.mqtt.discovery.prefix}/sensor/{node}/{name}/config"
        out.append((topic, json.dumps(payload, separators=(",", ":")).encode("utf-8")))
    return out


class Discovery:
    """Publishes the discovery configs at every connect of ``publisher``."""

    def __init__(self, config: AgentConfig, publisher: Publisher) -> None:
        self.messages = discovery_messages(config, publisher.version, emotion_labels(config))
        self.publisher = publisher

    def install(self) -> None:
        self.publisher.on_connected_hooks.append(self.publish)

    def publish(self) -> None:  # network thread (on connect)
        for topic, payload in self.messages:
            self.publisher.connection.publish_now(topic, payload, qos=1, retain=True)
