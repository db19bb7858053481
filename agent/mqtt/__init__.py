"""The device's side of the MQTT fleet protocol: topics, wire messages and the
connection (the protocol, shared with the controller side in ``agent.fleet``), the
durable outbox, the publisher, remote commands and Home Assistant discovery
(docs/mqtt.md)."""
