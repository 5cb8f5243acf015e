"""Sensorium firmware for ESP32 sensor nodes (MicroPython). `app.main()` runs the device."""

FW_VERSION = "1.0.0"
