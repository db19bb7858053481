"""Health gate: the device's retained status on the broker is "online" with VERSION.

    ea-status-probe.py TOPIC VERSION TIMEOUT_S  (broker settings from the environment:
    EA_MQTT_HOST, EA_MQTT_PORT, EA_MQTT_USERNAME, EA_MQTT_PASSWORD_FILE, EA_MQTT_TLS,
    EA_MQTT_CA, EA_MQTT_CERT, EA_MQTT_KEY)

Run with the release's Python (paho-mqtt is one of its dependencies). Exit 0 when the
retained status matches, 1 with the last status seen otherwise. Uses paho's public API
only, so that it works with every release.
"""

import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main() -> int:
    topic, version, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    env = os.environ
    seen = {"payload": None}
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    if env.get("EA_MQTT_USERNAME"):
        password = None
        if env.get("EA_MQTT_PASSWORD_FILE"):
            with open(env["EA_MQTT_PASSWORD_FILE"], encoding="utf-8") as handle:
                password = handle.readline().rstrip("\r\n")
        client.username_pw_set(env["EA_MQTT_USERNAME"], password)
    if env.get("EA_MQTT_TLS") == "1":
        client.tls_set(
            ca_certs=env.get("EA_MQTT_CA") or None,
            certfile=env.get("EA_MQTT_CERT") or None,
            keyfile=env.get("EA_MQTT_KEY") or None,
        )

    def on_connect(client, userdata, flags, reason, properties):
        client.subscribe(topic, qos=1)

    def on_message(client, userdata, message):
        try:
            seen["payload"] = json.loads(message.payload.decode("utf-8"))
        except ValueError:
            seen["payload"] = {"unparsable": message.payload[:200].decode("utf-8", "replace")}
        status = seen["payload"]
        if status.get("state") == "online" and status.get("version") == version:
            done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    deadline = time.monotonic() + timeout
    client.connect(env.get("EA_MQTT_HOST", "localhost"), int(env.get("EA_MQTT_PORT", "1883")))
    client.loop_start()
    try:
        done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        client.loop_stop()
        client.disconnect()
    if done.is_set():
        print(f"{topic}: online, version {version}")
        return 0
    print(f"{topic}: expected online with version {version}, last seen: {seen['payload']}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
