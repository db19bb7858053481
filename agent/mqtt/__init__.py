"""The MQTT fleet protocol: topics, wire messages, the durable outbox, the
publisher, remote commands, Home Assistant discovery, controller-side fleet
tools and the embedded broker of ``emotion-agent demo`` (docs/mqtt.md)."""
