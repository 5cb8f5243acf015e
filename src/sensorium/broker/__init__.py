"""The MQTT broker: Mosquitto provisioning (Dynamic Security) and the supervised child."""
