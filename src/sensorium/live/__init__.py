"""The live bus: telemetry and status events fanned out to browsers (WebSocket / SSE)."""
