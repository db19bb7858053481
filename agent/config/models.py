"""The configuration schema: one pydantic model per section, all with extra="forbid".

Every default here is the production default documented in docs/configuration.md
(a test keeps that page in step with these models). Filesystem checks (does a TLS
file exist and is it readable?) run only when the validation context says
``check_files=True``: the daemon and ``config validate`` do that; ``config validate
--offline`` does not, so that a config meant for another machine can be checked.
"""

import os
import re
import socket
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

# A device id and a fleet name end up in MQTT topics: no '/', '+', '#', no spaces.
TOPIC_SAFE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TOPIC_PREFIX = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"

DEFAULT_CONFIG_PATH = Path("/etc/emotion-agent/config.yaml")

CAMERA_SCHEMES = ("csi", "v4l2", "rtsp", "rtsps", "file", "synthetic")

#: What ``synthetic://`` is, in the words every command and page uses.
SYNTHETIC_DESCRIPTION = "the bundled sample photos, panned like a camera (no camera needed)"


def camera_uri(value: str) -> str:
    """A camera source as a URI: a bare ``/dev/videoN`` becomes ``v4l2:///dev/videoN``
    and a bare file path ``file://`` with its absolute path (as jetson-inference and
    ffmpeg take them); a URI with a scheme is returned as it is."""
    text = value.strip()
    if not text or urlsplit(text).scheme:
        return value
    if re.fullmatch(r"/dev/video\d+", text):
        return f"v4l2://{text}"
    return "file://" + str(Path(text).expanduser().absolute())


# models.detector profiles -> bundled manifest names, chosen by measurement
# (docs/benchmarks.md, "Face detectors"): "accurate" finds the most faces at every
# size; "fast" costs about half and misses faces that fill most of the frame.
DETECTOR_PROFILES = {"fast": "blazeface_full", "accurate": "blazeface_back"}


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _check_readable(path: Optional[Path], info: ValidationInfo) -> Optional[Path]:
    """Fail validation if ``path`` is set, files are checked, and it cannot be read."""
    if path is None or not (info.context or {}).get("check_files", False):
        return path
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    if path.is_dir():
        raise ValueError(f"is a directory, expected a file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file is not readable by this user: {path}")
    return path


class DeviceConfig(Section):
    """Who this device is. The id and fleet name become MQTT topic levels."""

    id: str = Field(
        default_factory=socket.gethostname,
        pattern=TOPIC_SAFE,
        description="Unique device id within the fleet; defaults to the hostname.",
    )
    fleet: str = Field(
        "default", pattern=TOPIC_SAFE, description="Fleet (or site) name this device belongs to."
    )
    site: Optional[str] = Field(
        None, max_length=128, description="Free-text location shown on dashboards."
    )


class CameraConfig(Section):
    """Where frames come from, as a URI."""

    source: str = Field(
        "synthetic://",
        description=(
            "Camera URI: csi://0 (Jetson CSI via nvarguscamerasrc), v4l2:///dev/video0 (USB), "
            "rtsp://host/path, file:///path/to/video-or-image, synthetic:// ("
            + SYNTHETIC_DESCRIPTION
            + "). A bare path is taken as file:// (made absolute), a bare /dev/videoN as "
            "v4l2://."
        ),
    )
    width: int = Field(1280, ge=64, le=7680, description="Capture width in pixels.")
    height: int = Field(720, ge=64, le=4320, description="Capture height in pixels.")
    fps: float = Field(30.0, gt=0, le=240, description="Requested capture frame rate.")
    loop: bool = Field(True, description="file:// sources: start again at the end (else stop).")
    reconnect_initial_s: float = Field(
        1.0, gt=0, le=60, description="First retry delay after a source fails."
    )
    reconnect_max_s: float = Field(
        30.0, gt=0, le=3600, description="Longest retry delay (exponential backoff cap)."
    )

    @field_validator("source")
    @classmethod
    def _source_uri(cls, value: str, info: ValidationInfo) -> str:
        bare = not urlsplit(value).scheme
        value = camera_uri(value)
        parts = urlsplit(value)
        scheme = parts.scheme.lower()
        if not value.strip():
            raise ValueError(
                "source is empty; use one of "
                + ", ".join(s + "://" for s in CAMERA_SCHEMES)
                + " or a file path"
            )
        if scheme not in CAMERA_SCHEMES:
            raise ValueError(
                f"unsupported camera URI scheme {parts.scheme!r}; use one of "
                + ", ".join(s + "://" for s in CAMERA_SCHEMES)
            )
        if scheme == "csi" and not re.fullmatch(r"\d+", parts.netloc):
            raise ValueError("csi:// needs a sensor number, for example csi://0")
        if scheme == "v4l2" and not parts.path.startswith("/dev/"):
            raise ValueError("v4l2:// needs a device path, for example v4l2:///dev/video0")
        if scheme in ("rtsp", "rtsps") and not parts.hostname:
            raise ValueError("rtsp:// needs a host, for example rtsp://192.0.2.10:8554/stream")
        if scheme == "file":
            if not parts.path:
                raise ValueError("file:// needs an absolute path, for example file:///data/a.mp4")
            try:
                _check_readable(Path(parts.path), info)
            except ValueError as exc:
                if not bare:
                    raise
                raise ValueError(
                    f"{exc} (a source without a scheme is read as a file path; cameras are "
                    "csi://0, v4l2:///dev/video0, rtsp://host/path, synthetic://)"
                ) from None
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> "CameraConfig":
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self


#: The one-camera form's camera id (``camera:``): its events carry no camera id.
SINGLE_CAMERA_ID = "camera"


class CameraOverrides(Section):
    """Per-camera values of pipeline thresholds (``cameras[].pipeline``); unset: the
    ``pipeline:`` section's."""

    detect_every_n: Optional[int] = Field(
        None, ge=1, le=30, description="pipeline.detect_every_n for this camera."
    )
    detection_threshold: Optional[float] = Field(
        None, ge=0, le=1, description="pipeline.detection_threshold for this camera."
    )
    nms_iou: Optional[float] = Field(
        None, ge=0, le=1, description="pipeline.nms_iou for this camera."
    )
    min_face_px: Optional[int] = Field(
        None, ge=8, le=4096, description="pipeline.min_face_px for this camera."
    )
    max_faces: Optional[int] = Field(
        None, ge=1, le=64, description="pipeline.max_faces for this camera."
    )
    emotion_min_confidence: Optional[float] = Field(
        None, ge=0, le=1, description="pipeline.emotion_min_confidence for this camera."
    )
    smoothing_alpha: Optional[float] = Field(
        None, gt=0, le=1, description="pipeline.smoothing_alpha for this camera."
    )
    track_iou: Optional[float] = Field(
        None, ge=0, le=1, description="pipeline.track_iou for this camera."
    )
    track_timeout_s: Optional[float] = Field(
        None, gt=0, le=60, description="pipeline.track_timeout_s for this camera."
    )
    summary_interval_s: Optional[float] = Field(
        None, ge=0, le=86400, description="pipeline.summary_interval_s for this camera."
    )


class CameraEntry(CameraConfig):
    """One camera of ``cameras:``: a ``camera:`` section with an id, a switch, a share of
    the device when it is saturated, and its own pipeline thresholds."""

    id: str = Field(
        pattern=TOPIC_SAFE,
        description="Camera id, unique on this device; events and telemetry carry it.",
    )
    enabled: bool = Field(True, description="false: configured but not opened.")
    weight: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Share of the device when cameras ask for more frames than it can serve "
        "(2 gets twice the frames of 1).",
    )
    pipeline: CameraOverrides = Field(default_factory=CameraOverrides)


class ModelsConfig(Section):
    """Which models run, on which backend, and where built engines are cached."""

    manifest: Optional[Path] = Field(
        None, description="Model manifest file; unset means the manifest bundled with the agent."
    )
    detector: str = Field(
        "accurate",
        min_length=1,
        validate_default=True,
        description="Face detector: a profile, fast (blazeface_full) or accurate "
        "(blazeface_back), or a manifest name (e.g. tiny_face_detector); a profile is "
        "replaced by its model name.",
    )
    landmarks: str = Field("face_landmark_68", description="68-point landmark net, by name.")
    emotion: str = Field(
        "fused_cnn",
        min_length=1,
        description="Emotion classifier, by manifest name: fused_cnn (the default: "
        "emotionnet and expression_cnn, log-linear fusion), emotionnet (from the 68 "
        "landmarks only), expression_cnn (our small CNN on the face crop), face_expression "
        "(face-api.js's net on the face crop) or fused (emotionnet and face_expression); "
        "its labels are the events' vocabulary.",
    )
    backend: Literal["auto", "tensorrt", "onnxruntime"] = Field(
        "auto",
        description="auto: TensorRT where it imports and a GPU is present, else ONNX Runtime.",
    )
    engine_cache_dir: Path = Field(
        Path("/var/cache/emotion-agent/engines"),
        description="Where per-device TensorRT engines and optimised ONNX graphs are cached.",
    )
    max_batch: int = Field(8, ge=1, le=64, description="Largest batch (faces per frame).")
    onnxruntime_threads: int = Field(
        0, ge=0, le=64, description="ONNX Runtime intra-op threads; 0 picks for this machine."
    )
    tensorrt_workspace_mb: int = Field(
        256, ge=16, le=16384, description="TensorRT builder workspace limit (fits a 4 GB Nano)."
    )

    @field_validator("detector")
    @classmethod
    def _detector_profile(cls, value: str) -> str:
        return DETECTOR_PROFILES.get(value, value)

    @field_validator("manifest")
    @classmethod
    def _manifest_readable(cls, value: Optional[Path], info: ValidationInfo) -> Optional[Path]:
        return _check_readable(value, info)


class SecondaryConfig(Section):
    """The reduced-rate secondary stage (for example the SigLIP2 40-emotion heads)."""

    enabled: bool = Field(False, description="Run the secondary model on selected face crops.")
    model: str = Field("siglip2_emotion_heads", description="Secondary model, by manifest name.")
    manifest: Optional[Path] = Field(
        None,
        description="Manifest that lists the secondary model (the one tools/siglip2/export.py "
        "writes); unset means models.manifest.",
    )
    rate_hz: float = Field(1.0, gt=0, le=30, description="At most this many runs per second.")
    margin: float = Field(
        0.2, ge=0, le=1, description="Square crop around the face: margin per side, x box side."
    )
    top_k: int = Field(5, ge=1, le=100, description="Emotions listed in a fine_emotions event.")
    publish_all: bool = Field(
        False, description="Also put every emotion's intensity in each fine_emotions event."
    )
    threads: int = Field(
        1,
        ge=1,
        le=64,
        description="ONNX Runtime threads of the secondary model (leave cores to the main loop).",
    )
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Run the secondary worker this much below the loop's CPU priority "
        "(Linux thread niceness; 0 = same priority).",
    )

    @field_validator("manifest")
    @classmethod
    def _manifest_readable(cls, value: Optional[Path], info: ValidationInfo) -> Optional[Path]:
        return _check_readable(value, info)


class PipelineConfig(Section):
    """Rates and thresholds of the detect -> landmarks -> emotion loop."""

    detect_every_n: int = Field(
        1, ge=1, le=30, description="Run the detector every Nth frame; track in between."
    )
    detection_threshold: float = Field(0.5, ge=0, le=1, description="Minimum face detection score.")
    nms_iou: float = Field(0.3, ge=0, le=1, description="IoU above which boxes are merged.")
    min_face_px: int = Field(
        40,
        ge=8,
        le=4096,
        description="Ignore faces smaller than this (px, the face crop: the detector's box "
        "after its manifest crop adjustment).",
    )
    max_faces: int = Field(8, ge=1, le=64, description="Most faces processed per frame.")
    emotion_min_confidence: float = Field(
        0.6, ge=0, le=1, description="Smoothed probability needed to report a label change."
    )
    smoothing_alpha: float = Field(
        0.3, gt=0, le=1, description="EMA weight of the newest frame's emotion probabilities."
    )
    track_iou: float = Field(0.3, ge=0, le=1, description="IoU that links a box to a track.")
    track_timeout_s: float = Field(
        1.0, gt=0, le=60, description="A track unseen this long ends (an 'end' event)."
    )
    summary_interval_s: float = Field(
        0.0, ge=0, le=86400, description="Periodic per-track summary events; 0 turns them off."
    )
    max_fps: Optional[float] = Field(
        None, gt=0, le=240, description="Cap on processed frames per second; unset = no cap."
    )
    overlap_detection: bool = Field(
        True,
        description="Run the detector on the next frame while the current one finishes "
        "(more frames/s when the loop is saturated, up to one frame's wait of latency); "
        "false: each frame through every stage before the next.",
    )
    secondary: SecondaryConfig = Field(default_factory=SecondaryConfig)


class TLSConfig(Section):
    """TLS towards the broker. Files are paths; their contents are never printed."""

    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: Optional[Path] = Field(
        None, description="CA bundle that signed the broker's certificate; unset = system CAs."
    )
    cert_file: Optional[Path] = Field(None, description="Client certificate (mutual TLS).")
    key_file: Optional[Path] = Field(None, description="Client private key (mutual TLS).")
    insecure_skip_verify: bool = Field(
        False, description="Do not verify the broker's hostname (testing only)."
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: Optional[Path], info: ValidationInfo) -> Optional[Path]:
        return _check_readable(value, info)

    @model_validator(mode="after")
    def _pairs(self) -> "TLSConfig":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together (mutual TLS)")
        if not self.enabled and (self.ca_file or self.cert_file):
            raise ValueError("TLS files are set but tls.enabled is false")
        return self


class OutboxConfig(Section):
    """The durable event outbox (SQLite, WAL) in ``state_dir``: bounds and delivery window."""

    max_messages: int = Field(
        500_000, ge=100, le=100_000_000, description="Most messages kept; oldest dropped first."
    )
    max_mib: float = Field(
        256.0, gt=0, le=65536, description="Most payload MiB kept; oldest dropped first."
    )
    max_age_s: float = Field(
        604800.0, gt=0, description="Messages older than this are dropped (default 7 days)."
    )
    inflight: int = Field(
        100, ge=1, le=1000, description="Messages published and not yet acknowledged, at most."
    )
    flush_timeout_s: float = Field(
        5.0, ge=0, le=25, description="On stop: how long to wait for the broker to ack the backlog."
    )
    max_pending: int = Field(
        10_000,
        ge=100,
        le=1_000_000,
        description="Messages held in memory while the disk refuses commits (disk full), at "
        "most; about 1 KiB each. Past it pending_policy drops one, counted in telemetry; "
        "a dropped event leaves a gap in seq.",
    )
    pending_policy: Literal["drop-oldest", "drop-newest"] = Field(
        "drop-oldest", description="Which message a full in-memory queue drops."
    )


class DiscoveryConfig(Section):
    """Home Assistant MQTT discovery (opt-in)."""

    enabled: bool = Field(False, description="Publish Home Assistant discovery configs.")
    prefix: str = Field(
        "homeassistant", pattern=TOPIC_PREFIX, description="Home Assistant's discovery prefix."
    )


_URL_SCHEMES = {
    "mqtt": ("tcp", False, 1883),
    "tcp": ("tcp", False, 1883),
    "mqtts": ("tcp", True, 8883),
    "ssl": ("tcp", True, 8883),
    "ws": ("websockets", False, 80),
    "wss": ("websockets", True, 443),
}


class MQTTConfig(Section):
    """The broker connection. Give either ``url`` or ``host``/``port``/``transport``."""

    url: Optional[str] = Field(
        None,
        exclude=True,
        description="Shorthand for host, port, transport and tls.enabled: mqtt://host:1883, "
        "mqtts://host:8883, ws://host/path, wss://host/path.",
    )
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    transport: Literal["tcp", "websockets"] = Field("tcp", description="tcp or websockets.")
    ws_path: str = Field("/mqtt", description="Path of the websockets endpoint.")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    client_id: Optional[str] = Field(
        None, max_length=128, description="MQTT client id; unset = emotion-agent-<device.id>."
    )
    username: Optional[str] = Field(None, description="Broker user name.")
    password: Optional[SecretStr] = Field(
        None, description="Broker password (prefer password_file). Never printed."
    )
    password_file: Optional[Path] = Field(
        None, description="File whose first line is the broker password."
    )
    tls: TLSConfig = Field(default_factory=TLSConfig)
    qos: Literal[0, 1, 2] = Field(1, description="QoS of event messages.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive interval.")
    topic_prefix: str = Field(
        "emotion",
        pattern=TOPIC_PREFIX,
        description="Topics are <topic_prefix>/<device.fleet>/<device.id>/...",
    )
    reconnect_min_s: float = Field(1.0, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_s: float = Field(60.0, gt=0, le=3600, description="Longest reconnect delay.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)

    @model_validator(mode="before")
    @classmethod
    def _expand_url(cls, data: Any) -> Any:
        """Accept ``url: mqtts://broker:8883`` as shorthand for host, port, transport, TLS."""
        if not isinstance(data, dict) or "url" not in data:
            return data
        data = dict(data)
        url = data.get("url")
        if url is None:
            return data
        if not isinstance(url, str):
            raise ValueError("url must be a string such as mqtt://broker.example:1883")
        parts = urlsplit(url)
        if parts.scheme not in _URL_SCHEMES:
            raise ValueError(
                f"url scheme {parts.scheme!r} is not one of " + ", ".join(sorted(_URL_SCHEMES))
            )
        if not parts.hostname:
            raise ValueError("url has no host, for example mqtt://broker.example:1883")
        if parts.username or parts.password:
            raise ValueError("url must not contain credentials; use username and password_file")
        clash = [k for k in ("host", "port", "transport", "ws_path") if k in data]
        if clash:
            raise ValueError("give either url or " + "/".join(clash) + ", not both")
        transport, tls_on, default_port = _URL_SCHEMES[parts.scheme]
        try:
            port = parts.port
        except ValueError:
            raise ValueError("url port must be a number between 1 and 65535") from None
        data["host"] = parts.hostname
        data["port"] = port if port is not None else default_port
        data["transport"] = transport
        if transport == "websockets" and parts.path:
            data["ws_path"] = parts.path
        if tls_on:
            tls = dict(data.get("tls") or {})
            tls.setdefault("enabled", True)
            data["tls"] = tls
        return data

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: Any) -> Any:
        # YAML reads `protocol: 5` as an integer.
        return str(value) if isinstance(value, (int, float)) else value

    @field_validator("qos", mode="before")
    @classmethod
    def _qos_from_text(cls, value: Any) -> Any:
        # Environment and --set values arrive as text.
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("password_file")
    @classmethod
    def _password_file_readable(cls, value: Optional[Path], info: ValidationInfo) -> Optional[Path]:
        return _check_readable(value, info)

    @model_validator(mode="after")
    def _credentials(self) -> "MQTTConfig":
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    def client_id_for(self, device_id: str) -> str:
        """The client id in use for device ``device_id``: ``client_id``, or
        emotion-agent-<device id> when it is unset."""
        return self.client_id or f"emotion-agent-{device_id}"


class TelemetryConfig(Section):
    """Periodic health and performance telemetry."""

    enabled: bool = Field(True, description="Publish telemetry.")
    interval_s: float = Field(10.0, ge=1, le=3600, description="Seconds between telemetry.")
    use_jtop: bool = Field(
        True, description="Read Jetson stats through jtop when its service runs."
    )


class LoggingConfig(Section):
    """The one logging setup."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Lowest level that is logged."
    )
    journald: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: log to journald when systemd started us."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class AgentConfig(Section):
    """The whole configuration file."""

    device: DeviceConfig = Field(default_factory=DeviceConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    cameras: Optional[List[CameraEntry]] = Field(
        None,
        min_length=1,
        max_length=64,
        description="Several cameras on this device (a list of camera sections, each with id, "
        "enabled, weight and pipeline overrides); replaces camera:, which is the one-camera "
        "form. Give one or the other.",
    )
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    mqtt: MQTTConfig = Field(default_factory=MQTTConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    state_dir: Path = Field(
        Path("/var/lib/emotion-agent"),
        description="Persistent state: event outbox, sequence numbers.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_camera_form(cls, data: Any) -> Any:
        both = isinstance(data, dict) and data.get("camera") is not None
        if both and data.get("cameras") is not None:
            raise ValueError(
                "give camera: (one camera) or cameras: (a list), not both; "
                'docs/configuration.md, "Several cameras"'
            )
        return data

    @model_validator(mode="after")
    def _cameras_distinct(self) -> "AgentConfig":
        if self.cameras is None:
            return self
        ids: Dict[str, int] = {}
        sources: Dict[str, int] = {}
        for k, cam in enumerate(self.cameras):
            if cam.id in ids:
                raise ValueError(
                    f"cameras: id {cam.id!r} is used twice (cameras {ids[cam.id]} and {k})"
                )
            ids[cam.id] = k
            if cam.source in sources:
                raise ValueError(
                    f"cameras: source {cam.source!r} is used twice (cameras {sources[cam.source]} "
                    f"and {k}); synthetic cameras are told apart by a name: synthetic://a, "
                    "synthetic://b"
                )
            sources[cam.source] = k
        if not any(cam.enabled for cam in self.cameras):
            raise ValueError("cameras: no camera is enabled")
        return self

    @model_serializer(mode="wrap")
    def _dump_one_form(self, handler: Any) -> Any:
        """Only the form in use is written out (``camera`` or ``cameras``), so that a
        dump validates again and a one-camera configuration dumps as it always did."""
        data = handler(self)
        if isinstance(data, dict):
            data.pop("camera" if self.cameras is not None else "cameras", None)
        return data

    @property
    def multi_camera(self) -> bool:
        """The ``cameras:`` form (events and telemetry carry camera ids), even with one."""
        return self.cameras is not None

    def camera_entries(self) -> List[CameraEntry]:
        """The enabled cameras; the one-camera form as one entry (id ``camera``)."""
        if self.cameras is None:
            return [CameraEntry(id=SINGLE_CAMERA_ID, **self.camera.model_dump())]
        return [cam for cam in self.cameras if cam.enabled]

    def camera_pipeline(self, camera: CameraEntry) -> PipelineConfig:
        """``pipeline:`` with ``camera``'s overrides applied."""
        changes = {k: v for k, v in camera.pipeline.model_dump().items() if v is not None}
        return self.pipeline.model_copy(update=changes) if changes else self.pipeline

    def effective_client_id(self) -> str:
        """The MQTT client id in use: the configured one or emotion-agent-<device id>."""
        return self.mqtt.client_id_for(self.device.id)

    def masked(self) -> Dict[str, Any]:
        """The configuration as plain data with every secret replaced by '**********'."""
        return self.model_dump(mode="json")
