"""The controller side of the fleet: what runs beside the broker, not on a device.

- ``watch``: the live table of a fleet's devices (``fleet watch``).
- ``send``: a command to one device and its response (``fleet send``).
- ``broker``: the small embedded MQTT broker of ``emotion-agent demo`` and the tests.
- ``store``, ``records``, ``recorder``: ``fleet record``, every device's status, events
  and telemetry into SQLite or PostgreSQL (docs/fleet.md).
- ``simulate``: ``fleet simulate``, N simulated agents in one process.

It shares with the device only the MQTT protocol: the connection
(``agent.mqtt.client``), the topic layout (``agent.mqtt.topics``) and the wire
messages (``agent.mqtt.messages``); it imports nothing else of the device's, and
nothing of the device's imports it (tests/test_engines_architecture.py).
"""
