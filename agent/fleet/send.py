"""Send a device a command (``fleet send``): :func:`send_command` publishes one
request and waits for its response: MQTT 5 Response Topic + Correlation Data, or
for 3.1.1 ``reply_to`` + ``correlation_id`` in the payload; a "busy" answer is
retried. :func:`parse_args` turns ``key=value`` words into the command's arguments.
"""

import json
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt.client import InboundMessage, MqttConnection
from agent.mqtt.topics import Topics


def parse_args(pairs: List[str], command: str) -> Dict[str, Any]:
    """``key=value`` words into command arguments; dotted keys nest; values are JSON
    when they parse as JSON, else text. For set-config they form ``{"config": ...}``."""
    args: Dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"arguments are key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        node = args
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: {part} is already a value")
        node[parts[-1]] = value
    if command == "set-config" and args and "config" not in args:
        args = {"config": args}
    return args


def send_command(
    connection: MqttConnection,
    topics: Topics,
    command: str,
    args: Dict[str, Any],
    timeout: float = 10.0,
    retries: int = 5,
) -> Optional[Dict[str, Any]]:
    """Send one command to the device of ``topics``; its response body, or None."""
    token = uuid.uuid4().hex
    reply = f"{topics.response(command)}/{token[:12]}"
    answers: List[Dict[str, Any]] = []
    got = threading.Event()

    def on_reply(message: InboundMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(body, dict) and (
            body.get("correlation_id") == token or message.correlation_data == token.encode()
        ):
            answers.append(body)
            got.set()

    connection.subscribe(reply, 1, on_reply)
    connection.start()
    if not connection.wait_connected(timeout):
        return None
    time.sleep(0.2)  # the subscription is made in on_connect
    for _ in range(retries + 1):
        got.clear()
        answers.clear()
        request: Dict[str, Any] = {"args": args, "correlation_id": token}
        props = None
        if connection.mqtt5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply
            props.CorrelationData = token.encode()
        else:
            request["reply_to"] = reply
        connection.publish(
            topics.command(command), json.dumps(request).encode(), qos=1, properties=props
        )
        if not got.wait(timeout):
            return None
        body = answers[0]
        if (body.get("error") or {}).get("code") != "busy":
            return body
        time.sleep(0.5)
    return answers[0] if answers else None
