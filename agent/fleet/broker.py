"""A small embedded MQTT broker for ``emotion-agent demo`` and local trials: no
mosquitto needed. It is not a production broker (use mosquitto, EMQX, HiveMQ...).

What it supports, exactly:

- MQTT 3.1.1 and MQTT 5 clients over plain TCP, on 127.0.0.1 by default; one thread
  per client. No TLS, no websockets, no authentication (user names and passwords are
  accepted and ignored), no ACLs.
- Clean sessions only: nothing is kept for a client between connections (CONNACK
  says "session present: 0"); a second connection with the same client id
  replaces the first.
- PUBLISH with QoS 0, 1 and 2 (QoS 2 is acknowledged with the full
  PUBREC/PUBREL/PUBCOMP exchange) and the retain flag; an empty retained message
  clears the topic's retained message.
- Delivery at the lower of the publish and subscription QoS, at most 1; QoS 1
  deliveries are not retransmitted (no session survives a connection anyway).
- SUBSCRIBE / UNSUBSCRIBE with ``+`` and ``#`` wildcards (``$``-topics are not
  matched by a leading wildcard); retained messages are sent on subscribe.
- The last will (with its retain flag) on a connection that ends without
  DISCONNECT, and on a keepalive timeout (1.5 x the client's keepalive).
- MQTT 5 properties of PUBLISH (response topic, correlation data, ...) are passed
  on unchanged to MQTT 5 subscribers and dropped for 3.1.1 ones; other properties
  are read and ignored. No topic aliases, no shared subscriptions, no will delay.
"""

import contextlib
import logging
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

log = logging.getLogger("emotion_agent.broker")

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14


class ProtocolError(Exception):
    pass


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT wildcard matching (+ one level, # the rest, including the parent)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + _varint(len(body)) + body


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet too short")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a string is not UTF-8") from None

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ProtocolError("malformed variable byte integer")

    def properties(self) -> bytes:
        """MQTT 5: the raw property block (length prefix included)."""
        start = self.pos
        length = self.varint()
        self.take(length)
        return self.data[start : self.pos]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


@dataclass
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes = b"\x00"  # MQTT 5 raw properties; b"\x00" = none


@dataclass
class _Client:
    sock: socket.socket
    client_id: str = ""
    version: int = 4
    keepalive: int = 0
    will: Optional[_Message] = None
    subscriptions: Dict[str, int] = field(default_factory=dict)
    next_id: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    clean_exit: bool = False

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def packet_id(self) -> int:
        with self.lock:
            self.next_id = self.next_id % 65535 + 1
            return self.next_id


class EmbeddedBroker:
    """``EmbeddedBroker().start()``; ``.port``; ``.stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(64)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._clients: Dict[str, _Client] = {}
        self._retained: Dict[str, _Message] = {}
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "EmbeddedBroker":
        self._thread = threading.Thread(target=self._accept, name="broker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            client.clean_exit = True
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connections -----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(_Client(sock),), daemon=True).start()

    def _read_packet(self, client: _Client) -> Tuple[int, int, bytes]:
        sock = client.sock
        head = self._recv(sock, 1)[0]
        length, shift = 0, 0
        for _ in range(4):
            byte = self._recv(sock, 1)[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        else:
            raise ProtocolError("malformed remaining length")
        return head >> 4, head & 0x0F, self._recv(sock, length) if length else b""

    @staticmethod
    def _recv(sock: socket.socket, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = sock.recv(n - got)
            if not chunk:
                raise ConnectionError("closed")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _serve(self, client: _Client) -> None:
        registered = False
        try:
            client.sock.settimeout(10.0)
            kind, _, body = self._read_packet(client)
            if kind != CONNECT:
                return
            self._connect(client, body)
            registered = True
            if client.keepalive:
                client.sock.settimeout(client.keepalive * 1.5)
            else:
                client.sock.settimeout(None)
            while not self._closed:
                kind, flags, body = self._read_packet(client)
                if kind == DISCONNECT:
                    client.clean_exit = True
                    return
                self._handle(client, kind, flags, body)
        except (OSError, ConnectionError, ProtocolError, socket.timeout) as exc:
            log.debug("client %s: %s", client.client_id or "?", exc)
        finally:
            if registered:
                self._gone(client)
            with contextlib.suppress(OSError):
                client.sock.close()

    def _connect(self, client: _Client, body: bytes) -> None:
        r = _Reader(body)
        if r.string() not in ("MQTT", "MQIsdp"):
            raise ProtocolError("not MQTT")
        client.version = r.u8()
        if client.version not in (4, 5):
            client.send(_packet(CONNACK, 0, b"\x00\x01" if client.version < 5 else b"\x00\x84"))
            raise ProtocolError(f"protocol level {client.version} is not supported")
        flags = r.u8()
        client.keepalive = r.u16()
        if client.version == 5:
            r.properties()
        client.client_id = r.string() or f"auto-{uuid.uuid4().hex[:12]}"
        if flags & 0x04:  # a will
            props = r.properties() if client.version == 5 else b"\x00"
            topic = r.string()
            payload = r.binary()
            client.will = _Message(topic, payload, min((flags >> 3) & 3, 1), bool(flags & 0x20))
            client.will.properties = props if client.version == 5 else b"\x00"
        if flags & 0x80:
            r.string()  # user name: accepted, not checked
        if flags & 0x40:
            r.binary()  # password
        with self._lock:
            old = self._clients.get(client.client_id)
            self._clients[client.client_id] = client
        if old is not None:  # the same id again: the old connection goes
            old.will = None
            with contextlib.suppress(OSError):
                old.sock.shutdown(socket.SHUT_RDWR)
        ack = b"\x00\x00" + (b"\x00" if client.version == 5 else b"")
        client.send(_packet(CONNACK, 0, ack))

    def _gone(self, client: _Client) -> None:
        with self._lock:
            if self._clients.get(client.client_id) is client:
                del self._clients[client.client_id]
        if client.will is not None and not client.clean_exit:
            self._route(client.will)

    # -- packets ---------------------------------------------------------------------------

    def _handle(self, client: _Client, kind: int, flags: int, body: bytes) -> None:
        r = _Reader(body)
        if kind == PUBLISH:
            qos, retain = (flags >> 1) & 3, bool(flags & 1)
            topic = r.string()
            if not topic or "+" in topic or "#" in topic:
                raise ProtocolError("invalid topic name")
            packet_id = r.u16() if qos else 0
            props = r.properties() if client.version == 5 else b"\x00"
            message = _Message(topic, r.rest(), min(qos, 1), retain, props)
            self._route(message)
            if qos == 1:
                client.send(_packet(PUBACK, 0, struct.pack("!H", packet_id)))
            elif qos == 2:
                client.send(_packet(PUBREC, 0, struct.pack("!H", packet_id)))
        elif kind == PUBREL:
            client.send(_packet(PUBCOMP, 0, body[:2]))
        elif kind == SUBSCRIBE:
            packet_id = r.u16()
            if client.version == 5:
                r.properties()
            granted, filters = [], []
            while r.pos < len(body):
                topic_filter = r.string()
                qos = min(r.u8() & 3, 1)
                client.subscriptions[topic_filter] = qos
                granted.append(qos)
                filters.append((topic_filter, qos))
            head = struct.pack("!H", packet_id) + (b"\x00" if client.version == 5 else b"")
            client.send(_packet(SUBACK, 0, head + bytes(granted)))
            with self._lock:
                retained = list(self._retained.values())
            for topic_filter, qos in filters:
                for message in retained:
                    if topic_matches(topic_filter, message.topic):
                        self._deliver(client, message, qos, retain=True)
        elif kind == UNSUBSCRIBE:
            packet_id = r.u16()
            if client.version == 5:
                r.properties()
            codes = []
            while r.pos < len(body):
                codes.append(0 if client.subscriptions.pop(r.string(), None) is not None else 17)
            head = struct.pack("!H", packet_id)
            tail = b"\x00" + bytes(codes) if client.version == 5 else b""
            client.send(_packet(UNSUBACK, 0, head + tail))
        elif kind == PINGREQ:
            client.send(_packet(PINGRESP, 0, b""))
        elif kind in (PUBACK, PUBREC, PUBCOMP):
            if kind == PUBREC:  # we never send QoS 2, but answer correctly anyway
                client.send(_packet(PUBREL, 2, body[:2]))
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _route(self, message: _Message) -> None:
        if message.retain:
            with self._lock:
                if message.payload:
                    self._retained[message.topic] = message
                else:
                    self._retained.pop(message.topic, None)
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            qos = max(
                (
                    q
                    for f, q in list(client.subscriptions.items())
                    if topic_matches(f, message.topic)
                ),
                default=None,
            )
            if qos is not None:
                with contextlib.suppress(OSError):
                    self._deliver(client, message, min(qos, message.qos), retain=False)

    def _deliver(self, client: _Client, message: _Message, qos: int, retain: bool) -> None:
        body = _string(message.topic)
        if qos:
            body += struct.pack("!H", client.packet_id())
        if client.version == 5:
            body += message.properties
        client.send(_packet(PUBLISH, (qos << 1) | int(retain), body + message.payload))
