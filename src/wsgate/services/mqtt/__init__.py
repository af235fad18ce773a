"""``mqtt.proxy``: MQTT over WebSocket to a broker (``proxy``), its packets (``codec``) and rules (``relay``)."""
