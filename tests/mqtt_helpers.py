"""Test-side MQTT clients: a subscriber that records what it receives, and helpers
to read event sequence numbers out of it."""

import json
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Optional[object] = None

    def json(self) -> Dict:
        return json.loads(self.payload)


class Subscriber:
    """A paho client on its own thread recording every message of ``topic_filter``."""

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        protocol: str = "5",
        client_id: str = "",
        persistent: bool = False,
        username: Optional[str] = None,
        password: Optional[str] = None,
        tls: Optional[Dict[str, str]] = None,
    ) -> None:
        self.messages: List[Received] = []
        self._lock = threading.RLock()  # predicates of wait_for may call snapshot()
        self._cond = threading.Condition(self._lock)
        self.topic_filter = topic_filter
        self.subscribed = threading.Event()
        v5 = protocol == "5"
        kwargs = {"clean_session": not persistent} if not v5 else {}
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            **kwargs,
        )
        if username:
            self.client.username_pw_set(username, password)
        if tls:
            self.client.tls_set(**tls)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the test subscriber could not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client, userdata, message):
        with self._cond:
            self.messages.append(
                Received(
                    message.topic,
                    bytes(message.payload),
                    bool(message.retain),
                    getattr(message, "properties", None),
                )
            )
            self._cond.notify_all()

    def snapshot(self) -> List[Received]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[List[Received]], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` on a snapshot every 50 ms, outside the lock: a predicate
        that parses thousands of payloads must not hold up ``on_message`` (evaluated
        under the lock on every message, it starved the network thread: O(n^2))."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.snapshot()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.05))

    def seqs(self) -> List[int]:
        return [m.json()["seq"] for m in self.snapshot() if m.topic.endswith("/events")]

    def close(self) -> None:
        self.client.disconnect()  # first: it wakes the network thread
        self.client.loop_stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class Requester:
    """The fleet controller's side of commands: publish requests to ``<base>/cmd/<name>``,
    collect every response under ``<base>/cmd/+/response/#``."""

    def __init__(
        self,
        broker,
        base: str,
        protocol: str = "5",
        username: Optional[str] = None,
        password: Optional[str] = None,
    ) -> None:
        self.base = base
        self.responses = Subscriber(
            broker.host,
            broker.port,
            f"{base}/cmd/+/response/#",
            username=username,
            password=password,
        )
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, name: str, payload: bytes, properties: Optional[Properties] = None) -> None:
        info = self.client.publish(f"{self.base}/cmd/{name}", payload, qos=1, properties=properties)
        info.wait_for_publish(5)

    def call(self, name: str, args: Optional[Dict] = None, timeout: float = 60.0) -> Dict:
        """Send one command and return its response body (JSON), matched by correlation id."""
        self._calls = getattr(self, "_calls", 0) + 1
        cid = f"call-{self._calls}"
        self.send(name, json.dumps({"args": args or {}, "correlation_id": cid}).encode())

        def mine(msgs: List[Received]) -> List[Dict]:
            out = []
            for m in msgs:
                try:
                    body = m.json()
                except ValueError:
                    continue
                if body.get("correlation_id") == cid:
                    out.append(body)
            return out

        if not self.responses.wait_for(lambda msgs: bool(mine(msgs)), timeout):
            raise AssertionError(f"no response to {name} within {timeout} s")
        body = mine(self.responses.snapshot())[0]
        if (body.get("error") or {}).get("code") == "busy":  # the agent says: try again
            time.sleep(0.2)
            return self.call(name, args, timeout)
        return body

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.responses.close()
