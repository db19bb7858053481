"""The fleet broker setup of docs/mqtt.md confines each device (issue 14), against a
real mosquitto: a device cannot take over another device's client id (which knocked
it off and published its "offline" will), cannot write into another fleet under its
own id, and the documented persistence settings bound what a SIGKILLed broker loses.
Each test also runs the old setup as a control, to show that it catches the defect."""

import time

import paho.mqtt.client as mqtt
import pytest

from agent.mqtt.client import ConnectionSettings, MqttConnection
from tests.mqtt_helpers import Subscriber, wait_until

#: docs/mqtt.md's fleet ACL: one block per device, naming its fleet and id.
FLEET_ACL = """\
user cam-a
topic readwrite emotion/lobby/cam-a/#
topic write homeassistant/sensor/cam-a/#

user cam-b
topic readwrite emotion/garage/cam-b/#
topic write homeassistant/sensor/cam-b/#

user ctl
topic read emotion/#
topic write emotion/+/+/cmd/#
"""
#: The pattern docs/mqtt.md had before: any fleet under the device's own id.
OLD_ACL = """\
pattern readwrite emotion/+/%u/#

user ctl
topic read emotion/#
topic write emotion/+/+/cmd/#
"""
USERS = {"cam-a": "pa", "cam-b": "pb", "ctl": "pc"}


def device(broker, user: str, client_id: str, protocol: str = "5", will=None) -> MqttConnection:
    return MqttConnection(
        ConnectionSettings(
            broker.host, broker.port, client_id, protocol, username=user, password=USERS[user]
        ),
        will=will,
    )


@pytest.mark.parametrize("confined", [True, False], ids=["use_username_as_clientid", "control"])
def test_a_device_cannot_take_over_another_devices_client_id(start_mosquitto, confined):
    broker = start_mosquitto(
        users=USERS,
        acl=FLEET_ACL,
        listener_options=["use_username_as_clientid true"] if confined else [],
    )
    status = "emotion/lobby/cam-a/status"
    watch = Subscriber(broker.host, broker.port, status, username="ctl", password="pc")
    a = device(broker, "cam-a", "emotion-agent-cam-a", will=lambda: (status, b"offline")).start()
    b = None
    try:
        assert a.wait_connected(10)
        connects = a.stats.connects
        # cam-b, with its own valid credentials, claims cam-a's client id
        b = device(broker, "cam-b", "emotion-agent-cam-a").start()
        assert b.wait_connected(10)
        time.sleep(1.5)
        offline = [m for m in watch.snapshot() if m.payload == b"offline"]
        if confined:
            assert a.connected and a.stats.connects == connects  # never knocked off
            assert offline == []  # and its will was never published
        else:  # the defect the setting fixes: cam-a is thrown out, its will goes out
            assert wait_until(lambda: a.stats.connects > connects, 10) or offline
    finally:
        a.stop()
        if b is not None:
            b.stop()
        watch.close()


@pytest.mark.parametrize("acl", ["fleet", "control"])
def test_a_device_writes_only_under_its_own_fleet_and_id(start_mosquitto, acl):
    broker = start_mosquitto(
        users=USERS,
        acl=FLEET_ACL if acl == "fleet" else OLD_ACL,
        listener_options=["use_username_as_clientid true"],
    )
    watch = Subscriber(broker.host, broker.port, "emotion/#", username="ctl", password="pc")
    conn = device(broker, "cam-a", "emotion-agent-cam-a").start()
    try:
        assert conn.wait_connected(10)
        own = conn.publish_and_wait("emotion/lobby/cam-a/events", b"own", timeout=5)
        # a retained status in another fleet, under cam-a's own id
        other_fleet = conn.publish_and_wait(
            "emotion/garage/cam-a/status", b"spoof-fleet", retain=True, timeout=5
        )
        other_device = conn.publish_and_wait("emotion/garage/cam-b/status", b"spoof-dev", timeout=5)
        assert own and not other_device
        assert watch.wait_for(lambda msgs: any(m.payload == b"own" for m in msgs), 5)
        time.sleep(0.3)
        spoofed = [m.payload for m in watch.snapshot() if m.payload.startswith(b"spoof")]
        if acl == "fleet":
            assert not other_fleet  # MQTT 5: the PUBACK says "not authorized"
            assert spoofed == []
            # and no retained message waits there for the next subscriber
            late = Subscriber(
                broker.host, broker.port, "emotion/garage/#", username="ctl", password="pc"
            )
            time.sleep(0.5)
            assert [m for m in late.snapshot() if m.retain] == []
            late.close()
        else:  # the old pattern let it through
            assert other_fleet and spoofed == [b"spoof-fleet"]
    finally:
        conn.stop()
        watch.close()


def _publish_acked(broker, count: int) -> None:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.username_pw_set("cam-a", "pa")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [
            client.publish("emotion/lobby/cam-a/events", f"e{i}".encode(), qos=1)
            for i in range(count)
        ]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("autosave", [2, 1800], ids=["autosave-2s", "default-1800s"])
def test_what_a_sigkilled_broker_loses_is_bounded_by_autosave(start_mosquitto, autosave):
    """A controller with a persistent session is away; the device's events are
    acknowledged and queued for it; then the broker is SIGKILLed. What survives is
    what the last autosave wrote: docs/mqtt.md quotes these figures."""
    broker = start_mosquitto(
        users=USERS,
        acl=FLEET_ACL,
        persistence=True,
        options=[f"autosave_interval {autosave}", "max_queued_messages 100000"],
    )
    sub = Subscriber(
        broker.host, broker.port, "emotion/lobby/#", protocol="3.1.1", client_id="ctl-sub",
        persistent=True, username="ctl", password="pc",
    )  # fmt: skip
    assert sub.subscribed.wait(10)
    sub.close()  # away, its session (and queue) stays on the broker
    _publish_acked(broker, 500)  # acknowledged: the device deletes them from its outbox
    time.sleep(autosave + 1.5 if autosave < 10 else 1.0)
    broker.kill()
    broker.restart()
    back = Subscriber(
        broker.host, broker.port, "emotion/lobby/#", protocol="3.1.1", client_id="ctl-sub",
        persistent=True, username="ctl", password="pc",
    )  # fmt: skip
    try:
        time.sleep(2.0)
        got = {m.payload for m in back.snapshot() if m.payload.startswith(b"e")}
        print(f"autosave_interval {autosave}: {len(got)} of 500 acknowledged events survived")
        if autosave < 10:
            assert len(got) == 500  # saved before the kill
        else:
            assert len(got) == 0  # acknowledged, then lost with the broker's memory
    finally:
        back.close()
