"""TLS (mutual), passwords from a file, and a broker ACL that confines a device to
its own subtree, against a real mosquitto."""

import time

import pytest

from agent.config.models import AgentConfig
from agent.mqtt.client import ConnectionSettings, MqttConnection
from agent.mqtt.publisher import Publisher
from tests.certs import certs  # noqa: F401  (fixture)
from tests.mqtt_feeder import synthetic_event
from tests.mqtt_helpers import Subscriber, wait_until

BASE = "emotion/lobby/cam-1"

# The fleet ACL from docs/mqtt.md: each device reads and writes only below its own
# fleet and id (one block per device); the controller reads every device's topics
# and writes commands.
FLEET_ACL = """\
user cam-1
topic readwrite emotion/lobby/cam-1/#

user cam-2
topic readwrite emotion/lobby/cam-2/#

user ctl
topic read emotion/#
topic write emotion/+/+/cmd/#
"""


def device_config(broker, tmp_path, **mqtt_settings) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "device": {"id": "cam-1", "fleet": "lobby"},
            "mqtt": {"host": broker.host, "port": broker.port, **mqtt_settings},
            "state_dir": str(tmp_path / "state"),
        }
    )


def tls_listener(c) -> list:
    return [
        f"cafile {c.ca.cert}",
        f"certfile {c.server.cert}",
        f"keyfile {c.server.key}",
        "require_certificate true",
        "use_identity_as_username true",
    ]


def test_mutual_tls(tmp_path, start_mosquitto, certs):  # noqa: F811
    broker = start_mosquitto(listener_options=tls_listener(certs))
    tls = {"enabled": True, "ca_file": str(certs.ca.cert)}
    cfg = device_config(
        broker,
        tmp_path,
        tls={**tls, "cert_file": str(certs.client.cert), "key_file": str(certs.client.key)},
    )
    sub = Subscriber(
        broker.host,
        broker.port,
        f"{BASE}/#",
        tls={
            "ca_certs": str(certs.ca.cert),
            "certfile": str(certs.client.cert),
            "keyfile": str(certs.client.key),
        },
    )
    publisher = Publisher.from_sections(cfg.mqtt, cfg.device, cfg.state_dir).start()
    try:
        assert publisher.connection.wait_connected(10)
        for i in range(5):
            publisher.emit(synthetic_event(i))
        assert publisher.flush(10)
        assert sub.wait_for(lambda msgs: len([m for m in msgs if "events" in m.topic]) == 5, 10)
    finally:
        publisher.close()
        sub.close()

    def refused(settings_tls: dict) -> str:
        bad = device_config(broker, tmp_path / "x", tls={**tls, **settings_tls})
        conn = MqttConnection(
            ConnectionSettings.from_mqtt(
                bad.mqtt, bad.effective_client_id(), reconnect_min_s=0.2, reconnect_max_s=0.4
            )
        ).start()
        try:
            assert wait_until(lambda: conn.stats.attempts >= 2 and conn.stats.last_error, 10)
            assert not conn.connected
            return str(conn.stats.last_error)
        finally:
            conn.stop()

    # no client certificate; one from another CA; a CA that did not sign the broker's
    refused({})
    refused({"cert_file": str(certs.stranger.cert), "key_file": str(certs.stranger.key)})
    error = refused(
        {
            "ca_file": str(certs.other_ca.cert),
            "cert_file": str(certs.client.cert),
            "key_file": str(certs.client.key),
        }
    )
    assert "certificate verify failed" in error


def test_password_from_a_file(tmp_path, start_mosquitto):
    broker = start_mosquitto(users={"cam-1": "right horse battery"})
    (tmp_path / "pw").write_text("right horse battery\n")
    (tmp_path / "bad").write_text("wrong\n")
    good_config = device_config(
        broker, tmp_path, username="cam-1", password_file=str(tmp_path / "pw")
    )
    good = ConnectionSettings.from_mqtt(good_config.mqtt, good_config.effective_client_id())
    conn = MqttConnection(good).start()
    try:
        assert conn.wait_connected(10)
    finally:
        conn.stop()
    bad_config = device_config(
        broker, tmp_path, username="cam-1", password_file=str(tmp_path / "bad")
    )
    bad = ConnectionSettings.from_mqtt(
        bad_config.mqtt, bad_config.effective_client_id(), reconnect_min_s=0.2
    )
    conn = MqttConnection(bad).start()
    try:
        assert wait_until(lambda: "refused" in str(conn.stats.last_error), 10)
        assert not conn.connected
    finally:
        conn.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_acl_confines_a_device_to_its_subtree(tmp_path, start_mosquitto, protocol):
    broker = start_mosquitto(users={"cam-1": "d", "cam-2": "d", "ctl": "c"}, acl=FLEET_ACL)
    watch = Subscriber(broker.host, broker.port, "emotion/#", username="ctl", password="c")
    conn = MqttConnection(
        ConnectionSettings(
            broker.host,
            broker.port,
            "emotion-agent-cam-1",
            protocol,
            username="cam-1",
            password="d",
        )
    ).start()
    try:
        assert conn.wait_connected(10)
        own = conn.publish_and_wait(f"{BASE}/events", b'{"own": 1}', timeout=5)
        other = conn.publish_and_wait("emotion/lobby/cam-2/events", b'{"spoof": 1}', timeout=5)
        outside = conn.publish_and_wait("elsewhere/x", b'{"spoof": 2}', timeout=5)
        assert own
        if protocol == "5":  # the PUBACK carries "not authorized"
            assert not other and not outside
        else:  # MQTT 3.1.1 has no way to say so: acknowledged and dropped
            assert other and outside
        assert watch.wait_for(lambda msgs: any(b"own" in m.payload for m in msgs), 5)
        time.sleep(0.3)
        assert not [m for m in watch.snapshot() if b"spoof" in m.payload]
    finally:
        conn.stop()
        watch.close()


def test_refused_events_stay_in_the_outbox(tmp_path, start_mosquitto):
    # A device whose credentials do not match its topics (cam-2's password, cam-1's
    # id): MQTT 5 PUBACKs say "not authorized"; nothing is deleted, it is counted.
    broker = start_mosquitto(users={"cam-1": "d", "cam-2": "d"}, acl=FLEET_ACL)
    cfg = device_config(broker, tmp_path, username="cam-2", password="d")
    publisher = Publisher.from_sections(cfg.mqtt, cfg.device, cfg.state_dir).start()
    try:
        assert publisher.connection.wait_connected(10)
        for i in range(20):
            publisher.emit(synthetic_event(i))
        assert wait_until(lambda: publisher.refused == 20, 10)
        publisher.outbox.flush(5)
        assert publisher.outbox.depth == 20 and publisher.acked == 0
    finally:
        publisher.close()
