"""The HTTP API: app factory, dependencies, error translation and metrics."""
