"""The ingest worker: MQTT in, batched writes out, plus the scheduler."""
