"""Remote commands: ``<base>/cmd/<name>`` in, a response out.

Request payload: a JSON object (:class:`CommandRequest`; empty means ``{}``), at most
:data:`MAX_PAYLOAD_BYTES`. The response (:class:`CommandResponse`) goes to:

- MQTT 5: the request's Response Topic, with its Correlation Data echoed;
- MQTT 3.1.1 (no properties): the payload's ``reply_to``, with its
  ``correlation_id`` echoed in the response body;
- else ``<base>/cmd/<name>/response``.

A response topic must lie at or below ``<base>/cmd/<name>/response`` (the device
publishes only in its own subtree, and never on its status, events or telemetry
because someone asked); another one gets an error on the default topic.

Commands: ``ping``; ``get-config`` (secrets masked); ``set-config`` (``args.config``:
a partial configuration merged into the running one; only the runtime settings in
:data:`SETTABLE`, never a path, credential, broker or identity; validated with the
same models as the file; applied live when only telemetry/logging change, else by a
clean restart of the pipeline; not written to disk); ``restart-pipeline``;
``restart-camera`` (``args.camera``: one camera's id, with ``cameras:``: that camera's
source is closed and opened again, the others run on);
``rebuild-engines`` (stops the pipeline, rebuilds its engines with ``force``, starts
it again; an error where no builder is wired).

Malformed, unknown, oversized, retained-by-mistake or invalid commands get an error
response (retained ones none: they would run again at every connect) and change
nothing. Commands run one at a time on a worker thread; at most ``queue_size``
wait, more get "busy". Nothing in a command can end the worker or the connection.
"""

import contextlib
import json
import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from agent import __version__
from agent.config import AgentConfig
from agent.mqtt.client import InboundMessage, MqttConnection
from agent.mqtt.messages import (
    CommandError,
    CommandRequest,
    CommandResponse,
    ErrorCode,
    parse_json_object,
    to_json,
    utc_now,
)
from agent.mqtt.topics import Topics

log = logging.getLogger("emotion_agent.commands")

MAX_PAYLOAD_BYTES = 64 * 1024
#: The settings ``set-config`` may change: runtime settings only. Paths (the model
#: manifest, the engine cache, state_dir, TLS files, the camera source, which may be
#: a file or a device), credentials, the broker and the device's identity come only
#: from the local file, environment or command line: a controller must not be able
#: to make the agent read or write a file. docs/mqtt.md lists them.
SETTABLE = frozenset(
    {
        "camera.width",
        "camera.height",
        "camera.fps",
        "camera.loop",
        "camera.reconnect_initial_s",
        "camera.reconnect_max_s",
        "models.detector",
        "models.landmarks",
        "models.emotion",
        "models.backend",
        "models.max_batch",
        "models.onnxruntime_threads",
        "models.tensorrt_workspace_mb",
        "pipeline.detect_every_n",
        "pipeline.detection_threshold",
        "pipeline.nms_iou",
        "pipeline.min_face_px",
        "pipeline.max_faces",
        "pipeline.emotion_min_confidence",
        "pipeline.smoothing_alpha",
        "pipeline.track_iou",
        "pipeline.track_timeout_s",
        "pipeline.summary_interval_s",
        "pipeline.max_fps",
        "pipeline.overlap_detection",
        "pipeline.secondary.enabled",
        "pipeline.secondary.model",
        "pipeline.secondary.rate_hz",
        "telemetry.enabled",
        "telemetry.interval_s",
        "telemetry.use_jtop",
        "logging.level",
    }
)
#: Longest error text sent back (validation messages are about the request, and
#: never carry file contents: no remotely settable value names a file).
MAX_ERROR_CHARS = 300
COMMANDS = (
    "ping",
    "get-config",
    "set-config",
    "restart-pipeline",
    "restart-camera",
    "rebuild-engines",
)


class AgentControl(Protocol):
    """What commands may do to the running agent (the Daemon implements it)."""

    def current_config(self) -> AgentConfig: ...

    def apply_config(self, config: AgentConfig) -> str:
        """Switch to ``config``; return "live" or "restart" (how it was applied)."""
        ...

    def restart_pipeline(self, prepare: Optional[Callable[[AgentConfig], Any]] = None) -> Any:
        """Stop the pipeline, run ``prepare(config)`` (an engine rebuild), start it again."""
        ...


class CommandFailed(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Rebuild = Callable[[AgentConfig], Dict[str, Any]]


def deep_merge(base: Dict[str, Any], patch: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _changed(old: Any, new: Any, prefix: str = "") -> List[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        paths: List[str] = []
        for key in sorted(set(old) | set(new)):
            paths += _changed(old.get(key), new.get(key), f"{prefix}{key}.")
        return paths
    return [prefix.rstrip(".")] if old != new else []


class CommandDispatcher:
    def __init__(
        self,
        connection: MqttConnection,
        topics: Topics,
        control: AgentControl,
        *,
        rebuild: Optional[Rebuild] = None,
        version: str = __version__,
        queue_size: int = 16,
        monotonic: Callable[[], float] = time.monotonic,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.connection = connection
        self.topics = topics
        self.control = control
        self.rebuild = rebuild
        self.version = version
        self._monotonic = monotonic
        self._started = monotonic()
        self._log = logger or log
        self._queue = queue.Queue(maxsize=queue_size)  # type: ignore[var-annotated]
        self._thread: Optional[threading.Thread] = None
        self.handled = 0
        connection.subscribe(topics.commands, 1, self._on_message)

    # -- threads -----------------------------------------------------------------------

    def start(self) -> "CommandDispatcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="commands", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_message(self, message: InboundMessage) -> None:
        """Network thread: queue it (or answer "busy"); never block."""
        if message.retain:
            self._log.warning(
                "ignored a retained command on %s: commands must not be retained (it would "
                "run again at every connect); clear it with an empty retained message",
                message.topic,
            )
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            request = None
            if len(message.payload) <= MAX_PAYLOAD_BYTES:  # for its correlation id
                with contextlib.suppress(Exception):
                    request = CommandRequest.model_validate(parse_json_object(message.payload))
            busy = ("busy", "too many commands queued; try again")
            self._send(*self._reply(message, request, error=busy))

    def _work(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            try:
                self._send(*self.handle(message))
            except Exception:  # handle() already catches; this is the last line
                self._log.exception("command handling failed")
            self.handled += 1

    def _send(self, topic: str, response: CommandResponse, props: Optional[Properties]) -> None:
        self.connection.publish(topic, to_json(response), qos=1, properties=props)

    # -- one command ------------------------------------------------------------------

    def _correlation(
        self, message: InboundMessage, request: Optional[CommandRequest]
    ) -> Optional[str]:
        if request is not None and request.correlation_id is not None:
            return request.correlation_id
        data = message.correlation_data
        if data is not None and len(data) <= 128:
            with contextlib.suppress(UnicodeDecodeError):
                return data.decode("utf-8")
        return None

    def _reply(
        self,
        message: InboundMessage,
        request: Optional[CommandRequest] = None,
        result: Optional[Dict[str, Any]] = None,
        error: Optional[Tuple[ErrorCode, str]] = None,
    ) -> Tuple[str, CommandResponse, Optional[Properties]]:
        name = self.topics.command_name(message.topic or "") or "?"
        topic = self.topics.response(name)
        wanted = message.response_topic or (request.reply_to if request else None)
        if wanted is not None and error is None:
            if self.topics.allowed_response_topic(name, wanted):
                topic = wanted
            else:
                error = ("bad_request", f"the response topic must be at or below {topic}")
                result = None
        elif wanted is not None and self.topics.allowed_response_topic(name, wanted):
            topic = wanted
        response = CommandResponse(
            device_id=self.topics.device,
            fleet=self.topics.fleet,
            timestamp=utc_now(),
            command=name,
            correlation_id=self._correlation(message, request),
            ok=error is None,
            result=result if error is None else None,
            error=CommandError(code=error[0], message=error[1]) if error else None,
        )
        props = None
        if self.connection.mqtt5 and message.correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = message.correlation_data
        return topic, response, props

    def handle(self, message: InboundMessage) -> Tuple[str, CommandResponse, Optional[Properties]]:
        """Validate and run one command; return where and what to answer."""
        request: Optional[CommandRequest] = None
        try:
            if len(message.payload) > MAX_PAYLOAD_BYTES:
                raise CommandFailed(
                    "too_large",
                    f"the payload has {len(message.payload)} bytes; at most "
                    f"{MAX_PAYLOAD_BYTES} are accepted",
                )
            try:
                request = CommandRequest.model_validate(parse_json_object(message.payload))
            except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and validation errors
                raise CommandFailed("bad_request", _describe(exc)) from None
            name = self.topics.command_name(message.topic or "")
            if name not in COMMANDS:
                raise CommandFailed(
                    "unknown_command", f"unknown command {name!r}; known: {', '.join(COMMANDS)}"
                )
            result = self._run(name, request.args)
            return self._reply(message, request, result=result)
        except CommandFailed as exc:
            return self._reply(message, request, error=(exc.code, exc.message))
        except Exception as exc:
            # The reason stays in the local log (its text may quote a local file); the
            # traceback only at debug level. The controller learns what failed, not why.
            self._log.error("command on %s failed: %s", message.topic, _short(str(exc)))
            self._log.debug("command on %s failed", message.topic, exc_info=True)
            return self._reply(
                message,
                request,
                error=("failed", f"{type(exc).__name__}; the device's log has the details"),
            )

    def _run(self, name: str, args: Dict[str, Any]) -> Dict[str, Any]:
        if name == "set-config":
            return self._set_config(args)
        if name == "restart-camera":
            return self._restart_camera(args)
        if args:
            raise CommandFailed("bad_request", f"{name} takes no arguments, got {sorted(args)}")
        if name == "ping":
            return {
                "pong": True,
                "version": self.version,
                "uptime_s": round(self._monotonic() - self._started, 1),
            }
        if name == "get-config":
            return {"config": self.control.current_config().masked()}
        if name == "restart-pipeline":
            self._log.info("command: restarting the pipeline")
            self.control.restart_pipeline()
            return {"restarted": True}
        if self.rebuild is None:
            raise CommandFailed(
                "not_available", "this agent has no engine builder wired (engines.prepare)"
            )
        self._log.info("command: rebuilding the engines")
        built = self.control.restart_pipeline(self.rebuild)
        return {"rebuilt": built, "restarted": True}

    def _restart_camera(self, args: Dict[str, Any]) -> Dict[str, Any]:
        camera = args.get("camera")
        if set(args) != {"camera"} or not isinstance(camera, str):
            raise CommandFailed("bad_request", 'restart-camera takes {"camera": "<id>"}')
        config = self.control.current_config()
        if not config.multi_camera:
            raise CommandFailed(
                "not_available", "this device has one camera (camera:); use restart-pipeline"
            )
        known = [c.id for c in config.camera_entries()]
        if camera not in known:
            raise CommandFailed(
                "bad_request", f"no enabled camera {camera!r}; known: {', '.join(known)}"
            )
        restart = getattr(self.control, "restart_camera", None)
        if restart is None:
            raise CommandFailed("not_available", "this agent cannot restart one camera")
        self._log.info("command: restarting camera %s", camera)
        restart(camera)
        return {"camera": camera, "restarted": True}

    def _set_config(self, args: Dict[str, Any]) -> Dict[str, Any]:
        if set(args) != {"config"} or not isinstance(args["config"], dict):
            raise CommandFailed(
                "bad_request", 'set-config takes {"config": {section: {key: value}}}'
            )
        patch: Dict[str, Any] = args["config"]
        if not patch:
            raise CommandFailed("bad_request", "set-config: the config is empty")
        paths = _leaf_paths(patch)
        unknown = [path for path in paths if not _known(path)]
        if unknown:
            raise CommandFailed(
                "invalid_config",
                _short("unknown key: " + ", ".join(_short(p, 80) for p in unknown[:10])),
            )
        sections = [path for path in paths if _known(path) == "section"]
        if sections:
            raise CommandFailed(
                "invalid_config",
                _short(f"{', '.join(sections[:10])}: a section takes an object of settings"),
            )
        refused = [path for path in paths if path not in SETTABLE]
        if refused:
            shown = ", ".join(_short(path, 80) for path in refused[:10])
            raise CommandFailed(
                "not_allowed",
                f"cannot be set remotely: {shown}{' ...' if len(refused) > 10 else ''} "
                "(only runtime settings, docs/mqtt.md; paths, credentials, the broker and "
                "the device's identity come from the local configuration file)",
            )
        current = self.control.current_config()
        try:  # no file is read: nothing that names one can change (SETTABLE)
            new = AgentConfig.model_validate(
                deep_merge(current.model_dump(), patch), context={"check_files": False}
            )
        except ValidationError as exc:
            raise CommandFailed("invalid_config", _describe(exc)) from None
        except (ValueError, TypeError, RecursionError) as exc:
            raise CommandFailed("invalid_config", _describe(exc)) from None
        changed = _changed(current.masked(), new.masked())
        if not changed:
            return {"applied": "unchanged", "changed": []}
        self._log.info("command: set-config %s", ", ".join(changed))
        how = self.control.apply_config(new)
        return {"applied": how, "changed": changed}


def _leaf_paths(patch: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted paths of the values a patch sets (a dict value is a section, not a leaf,
    unless it is empty)."""
    paths: List[str] = []
    for key, value in patch.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and len(paths) < 1000:
            paths += _leaf_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def _known(path: str) -> Optional[str]:
    """ "setting" or "section" if this dotted path is one in the configuration, else None."""
    model: Any = AgentConfig
    for part in path.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) else None
    return "section" if hasattr(model, "model_fields") else "setting"


def _short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """One line, at most ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    """What was wrong with a request, without the values sent or anything read."""
    if isinstance(exc, ValidationError):
        return _short(
            "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
                for err in exc.errors(include_url=False, include_input=False, include_context=False)
            )
        )
    if isinstance(exc, UnicodeDecodeError):
        return "the payload is not UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return f"the payload is not JSON ({exc.msg} at {exc.pos})"
    if isinstance(exc, RecursionError):
        return "the payload is nested too deeply"
    return _short(str(exc))
