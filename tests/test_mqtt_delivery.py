"""Delivery through a real mosquitto: broker restarts and an agent killed with
SIGKILL mid-stream lose no committed event; status birth, will and "stopped"."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import List

from agent.config.models import AgentConfig
from agent.mqtt.client import Backoff, ConnectionSettings, MqttConnection
from agent.mqtt.messages import EventMessage, StatusMessage
from agent.mqtt.outbox import FILENAME
from agent.mqtt.publisher import Publisher
from tests.conftest import REPO
from tests.mqtt_feeder import synthetic_event
from tests.mqtt_helpers import Subscriber, wait_until
from tests.tcp_proxy import TcpProxy

# mosquitto drops QoS 1 messages beyond 1000 queued per client by default: the test
# subscribers must not lose anything to that (docs/mqtt.md: size it on a fleet broker).
UNLIMITED_QUEUE = ["max_queued_messages 0"]


def config(broker, state_dir: Path, protocol: str = "5", **mqtt) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "device": {"id": "cam-1", "fleet": "lobby"},
            "mqtt": {"host": broker.host, "port": broker.port, "protocol": protocol, **mqtt},
            "state_dir": str(state_dir),
        }
    )


def write_config(path: Path, cfg: AgentConfig) -> Path:
    data = cfg.model_dump(mode="json", exclude={"mqtt": {"password"}})
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def feeder(config_path: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_AGENT")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.mqtt_feeder", "--config", str(config_path), *args],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        got = proc.stdout.readline()
        if got.strip() == line:
            return
        if not got and proc.poll() is not None:
            break
    raise AssertionError(f"no {line!r} from the feeder; stderr: {proc.stderr.read()[-3000:]}")


def _ranges(values: List[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7" (for failure messages)."""
    out: List[str] = []
    for v in values:
        if out and int(out[-1].split("-")[-1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets():
    import random

    backoff = Backoff(1.0, 8.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    caps = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(cap * 0.5 <= d <= cap for d, cap in zip(delays, caps)), delays
    assert len({round(d, 6) for d in delays[3:]}) == 5  # jitter: no two alike at the cap
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_the_broker_goes_down_twice_mid_stream_and_every_seq_arrives(tmp_path, start_mosquitto):
    # A persistent broker and a persistent subscriber session: what the broker had
    # accepted survives its restart, so any loss would be the agent's.
    broker = start_mosquitto(persistence=True, options=UNLIMITED_QUEUE)
    sub = Subscriber(
        broker.host, broker.port, "emotion/#", protocol="3.1.1", client_id="sub", persistent=True
    )
    cfg = config(broker, tmp_path / "state")
    publisher = Publisher.from_sections(
        cfg.mqtt, cfg.device, cfg.state_dir, reconnect_min_s=0.1, reconnect_max_s=0.4
    ).start()
    total = 4000
    emitted = []

    def feed() -> None:
        started = time.monotonic()
        for i in range(total):
            delay = started + i / 2000.0 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publisher.emit(synthetic_event(i))
            emitted.append(i)

    thread = threading.Thread(target=feed)
    try:
        assert publisher.connection.wait_connected(10)
        thread.start()
        for at in (600, 2200):  # two outages while events keep coming
            assert wait_until(lambda at=at: len(emitted) >= at, 20)
            broker.stop()
            time.sleep(0.4)
            down_depth = publisher.outbox.depth
            broker.restart()
            assert down_depth > 0  # events piled up in the outbox meanwhile
        thread.join(30)
        assert publisher.flush(30)
        sub.wait_for(lambda msgs: {m for m in _seqs(msgs)} >= set(range(1, total + 1)), 30)
        received = _seqs(sub.snapshot())
        missing = sorted(set(range(1, total + 1)) - set(received))
        assert not missing, f"{len(missing)} never arrived: {_ranges(missing)}"
        assert set(received) == set(range(1, total + 1))
        assert publisher.connection.stats.connects >= 3
        # every message is a valid event envelope of this device
        msg = EventMessage.model_validate_json(
            next(m.payload for m in sub.snapshot() if m.topic == "emotion/lobby/cam-1/events")
        )
        assert (msg.device_id, msg.fleet) == ("cam-1", "lobby")
        dups = [s for s, n in Counter(received).items() if n > 1]
        print(f"{len(dups)} duplicates (QoS 1 re-sends after a lost PUBACK)")
    finally:
        publisher.close()
        sub.close()


def _seqs(messages):
    return [json.loads(m.payload)["seq"] for m in messages if m.topic.endswith("/events")]


def test_sigkill_mid_stream_loses_no_committed_event_and_seq_continues(tmp_path, start_mosquitto):
    broker = start_mosquitto(options=UNLIMITED_QUEUE)
    sub = Subscriber(broker.host, broker.port, "emotion/lobby/cam-1/events", protocol="3.1.1")
    path = write_config(tmp_path / "c.yaml", config(broker, tmp_path / "state", "3.1.1"))
    first = feeder(path, "--count", "100000", "--rate", "3000")
    try:
        read_until(first, "emitted 1500")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    with sqlite3.connect(str(tmp_path / "state" / FILENAME)) as db:
        committed = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0] - 1
        left = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert committed >= 1000
    second = feeder(path, "--count", "500")
    try:
        out, err = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    assert "flushed depth=0" in out
    final = committed + 500
    assert sub.wait_for(lambda msgs: set(_seqs(msgs)) >= set(range(1, final + 1)), 30), (
        f"missing: {sorted(set(range(1, final + 1)) - set(sub.seqs()))[:20]}"
    )
    time.sleep(0.3)
    received = sub.seqs()
    assert set(received) == set(range(1, final + 1))  # nothing committed was lost ...
    # ... the second run went on from committed + 1, in order ...
    second_run = [s for s in received if s > committed]
    assert second_run == list(range(committed + 1, final + 1))
    # ... and the only duplicates are events the first run had left in its outbox
    dups = [s for s, n in Counter(received).items() if n > 1]
    assert all(s <= committed for s in dups)
    assert len(dups) <= left
    sub.close()


def test_birth_will_and_stopped_are_retained(tmp_path, start_mosquitto):
    broker = start_mosquitto()
    path = write_config(tmp_path / "c.yaml", config(broker, tmp_path / "state"))
    status_topic = "emotion/lobby/cam-1/status"

    def retained_status() -> str:
        """The state a subscriber that connects now is given (retained), or ''."""
        late = Subscriber(broker.host, broker.port, status_topic)
        try:
            late.wait_for(lambda msgs: any(m.retain for m in msgs), 2)
            kept = [m for m in late.snapshot() if m.retain]
            if not kept:
                return ""
            status = StatusMessage.model_validate_json(kept[0].payload)
            assert (status.device_id, status.fleet) == ("cam-1", "lobby")
            return status.state
        finally:
            late.close()

    agent = feeder(path, "--count", "10", "--hold")
    try:
        read_until(agent, "holding")
        assert wait_until(lambda: retained_status() == "online", 10)
        agent.send_signal(signal.SIGKILL)  # the broker sees the socket close: the will
        agent.wait(10)
        assert wait_until(lambda: retained_status() == "offline", 10)

        agent = feeder(path, "--count", "10", "--hold")
        read_until(agent, "holding")
        assert wait_until(lambda: retained_status() == "online", 10)
        agent.send_signal(signal.SIGTERM)  # clean: "stopped", and no will
        out, err = agent.communicate(timeout=30)
        assert "stopped" in out, err
        time.sleep(0.3)
        assert retained_status() == "stopped"
    finally:
        if agent.poll() is None:
            agent.kill()


def test_in_flight_messages_lost_in_a_partition_survive_an_agent_crash(tmp_path, start_mosquitto):
    # Through a proxy that swallows every byte: the agent's in-flight publishes never
    # reach the broker and are never acknowledged. The agent is SIGKILLed during the
    # partition; after the restart everything committed arrives. (An outbox that
    # forgot a message once handed to paho would lose the in-flight window here.)
    broker = start_mosquitto(options=UNLIMITED_QUEUE)
    proxy = TcpProxy((broker.host, broker.port))
    sub = Subscriber(broker.host, broker.port, "emotion/lobby/cam-1/events")
    cfg = config(broker, tmp_path / "state").model_copy(deep=True)
    cfg.mqtt.port = proxy.port
    path = write_config(tmp_path / "c.yaml", cfg)
    agent = feeder(path, "--count", "100000", "--rate", "2000")
    try:
        read_until(agent, "emitted 600")
        proxy.blackhole = True
        read_until(agent, "emitted 1500")  # the window filled up, the rest waits
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert proxy.swallowed > 0
    before = set(sub.seqs())
    with sqlite3.connect(str(tmp_path / "state" / FILENAME)) as db:
        committed = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0] - 1
    missing = set(range(1, committed + 1)) - before
    assert len(missing) >= 100  # at least the swallowed in-flight window
    proxy.cut()
    proxy.blackhole = False
    again = feeder(path, "--count", "0")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert "flushed depth=0" in out, out + err
    assert sub.wait_for(lambda msgs: set(_seqs(msgs)) >= set(range(1, committed + 1)), 20), (
        f"lost: {sorted(set(range(1, committed + 1)) - set(sub.seqs()))[:10]}"
    )
    sub.close()
    proxy.close()


def test_publish_and_wait_forgets_a_waiter_that_timed_out(mosquitto):
    # Through a proxy that swallows every byte, the acknowledgement never comes: the
    # call gives up after its timeout, and its waiter must not stay behind (one per
    # timed-out call, for ever; a later publish with the same paho mid would wake it).
    proxy = TcpProxy((mosquitto.host, mosquitto.port))
    connection = MqttConnection(ConnectionSettings(proxy.host, proxy.port, "waiter")).start()
    try:
        assert connection.wait_connected(10)
        assert connection.publish_and_wait("t/acked", b"1", timeout=5)
        assert connection._waiters == {}
        proxy.blackhole = True
        assert not connection.publish_and_wait("t/swallowed", b"2", timeout=0.3)
        assert wait_until(lambda: connection._waiters == {}, 2.0), connection._waiters
    finally:
        connection.stop()
        proxy.close()
