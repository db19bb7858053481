"""The embedded broker (agent/fleet/broker.py) with paho clients, MQTT 5 and 3.1.1:
wildcards, QoS 0/1/2, retained messages, the will, keepalive, MQTT 5 properties,
and the real publisher through it."""

import socket
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config.models import AgentConfig
from agent.fleet.broker import EmbeddedBroker, topic_matches
from agent.mqtt.publisher import Publisher
from tests.mqtt_feeder import synthetic_event
from tests.mqtt_helpers import Subscriber, wait_until


@pytest.fixture
def broker():
    with EmbeddedBroker() as b:
        yield b


def client(broker, protocol="5", **kwargs):
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
        **kwargs,
    )
    return c


def test_topic_matching():
    assert topic_matches("a/+/c", "a/b/c") and not topic_matches("a/+/c", "a/b/d")
    assert topic_matches("a/#", "a") and topic_matches("a/#", "a/b/c")
    assert topic_matches("#", "x/y") and not topic_matches("#", "$SYS/x")
    assert not topic_matches("a/+", "a/b/c") and topic_matches("+/+", "a/b")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_publish_subscribe_qos_and_retained(broker, protocol):
    sub = Subscriber(broker.host, broker.port, "emotion/+/cam-1/#", protocol=protocol)
    pub = client(broker, protocol)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        for qos in (0, 1, 2):
            pub.publish(f"emotion/f/cam-1/q{qos}", f"{qos}".encode(), qos=qos).wait_for_publish(5)
        pub.publish("emotion/f/cam-2/q1", b"not mine", qos=1).wait_for_publish(5)
        pub.publish("emotion/f/cam-1/status", b"online", qos=1, retain=True).wait_for_publish(5)
        assert sub.wait_for(lambda msgs: len(msgs) == 4, 5), sub.snapshot()
        assert [m.payload for m in sub.snapshot()] == [b"0", b"1", b"2", b"online"]
        late = Subscriber(broker.host, broker.port, "emotion/f/cam-1/status", protocol=protocol)
        assert late.wait_for(lambda msgs: len(msgs) == 1, 5)
        assert late.snapshot()[0].retain and late.snapshot()[0].payload == b"online"
        late.close()
        pub.publish("emotion/f/cam-1/status", b"", qos=1, retain=True).wait_for_publish(5)
        empty = Subscriber(broker.host, broker.port, "emotion/f/cam-1/status", protocol=protocol)
        time.sleep(0.3)
        assert empty.snapshot() == []  # the retained message was cleared
        empty.close()
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.close()


def test_mqtt5_properties_pass_through(broker):
    sub = Subscriber(broker.host, broker.port, "req/#")
    pub = client(broker)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "req/answer"
        props.CorrelationData = b"\x01\x02"
        pub.publish("req/x", b"{}", qos=1, properties=props).wait_for_publish(5)
        assert sub.wait_for(lambda msgs: len(msgs) == 1, 5)
        got = sub.snapshot()[0].properties
        assert got.ResponseTopic == "req/answer" and got.CorrelationData == b"\x01\x02"
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_will_on_an_abrupt_end_and_not_on_disconnect(broker, protocol):
    sub = Subscriber(broker.host, broker.port, "dev/+/status", protocol=protocol)
    for name, clean in (("a", True), ("b", False)):
        c = client(broker, protocol, client_id=name)
        c.will_set(f"dev/{name}/status", b"offline", qos=1, retain=True)
        c.connect(broker.host, broker.port)
        c.loop_start()
        time.sleep(0.2)
        if clean:
            c.disconnect()
            c.loop_stop()
        else:
            c.loop_stop()
            c.socket().shutdown(socket.SHUT_RDWR)  # the process "dies"
    assert sub.wait_for(lambda msgs: len(msgs) >= 1, 5)
    time.sleep(0.3)
    assert [(m.topic, m.payload) for m in sub.snapshot()] == [("dev/b/status", b"offline")]
    sub.close()


def test_keepalive_timeout_sends_the_will(broker):
    sub = Subscriber(broker.host, broker.port, "dev/+/status")
    raw = socket.create_connection((broker.host, broker.port))
    # CONNECT (3.1.1), keepalive 1 s, will "dev/k/status" = "gone", then silence
    will_topic, will = b"dev/k/status", b"gone"
    body = (
        b"\x00\x04MQTT\x04" + bytes([0x02 | 0x04]) + b"\x00\x01" + b"\x00\x01k"
        + len(will_topic).to_bytes(2, "big") + will_topic
        + len(will).to_bytes(2, "big") + will
    )  # fmt: skip
    raw.sendall(bytes([0x10, len(body)]) + body)
    assert raw.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted
    assert sub.wait_for(lambda msgs: bool(msgs), 5)  # after 1.5 s of silence
    assert sub.snapshot()[0].payload == b"gone"
    raw.close()
    sub.close()


def test_garbage_does_not_hurt_the_broker(broker):
    for junk in (b"\xff" * 10, b"\x10\xff\xff\xff\xff\x7f", b"\x10\x02\x00\x00", b""):
        s = socket.create_connection((broker.host, broker.port))
        s.sendall(junk)
        s.close()
    sub = Subscriber(broker.host, broker.port, "x")
    sub.close()


def test_the_publisher_through_the_embedded_broker(broker, tmp_path):
    sub = Subscriber(broker.host, broker.port, "emotion/#")
    cfg = AgentConfig.model_validate(
        {
            "device": {"id": "demo", "fleet": "f"},
            "mqtt": {"host": broker.host, "port": broker.port},
            "state_dir": str(tmp_path),
        }
    )
    publisher = Publisher.from_sections(cfg.mqtt, cfg.device, cfg.state_dir).start()
    try:
        for i in range(2000):
            publisher.emit(synthetic_event(i))
        assert publisher.flush(20)
        assert sub.wait_for(lambda msgs: len(sub.seqs()) == 2000, 20)
        assert sub.seqs() == list(range(1, 2001))
        assert publisher.publish_stopped()
    finally:
        publisher.close()
    assert wait_until(lambda: b'"stopped"' in sub.snapshot()[-1].payload, 5)
    sub.close()
