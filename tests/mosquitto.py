"""A real MQTT broker for tests: mosquitto on a free loopback port
(tools/mosquitto.py starts it; these are its pytest fixtures).

    def test_x(mosquitto):                      # anonymous broker
        client.connect(mosquitto.host, mosquitto.port)

    def test_y(start_mosquitto):                # users, ACL, extra listener options
        broker = start_mosquitto(users={"agent": "s3cret"}, acl="user agent\\ntopic write x/#\\n")

Everything lives in the test's tmp_path; the broker is stopped at teardown.
"""

from typing import Callable, Iterator, List

import pytest

from tools.mosquitto import Broker, free_port, start_broker

__all__ = ["Broker", "free_port", "mosquitto", "start_broker", "start_mosquitto"]


@pytest.fixture
def start_mosquitto(tmp_path) -> Iterator[Callable[..., Broker]]:
    """A factory: ``start_mosquitto(users=..., acl=..., listener_options=...)``."""
    started: List[Broker] = []

    def start(**kwargs) -> Broker:
        broker = start_broker(tmp_path / f"mosquitto{len(started)}", **kwargs)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def mosquitto(start_mosquitto) -> Broker:
    """An anonymous broker on 127.0.0.1."""
    return start_mosquitto()
