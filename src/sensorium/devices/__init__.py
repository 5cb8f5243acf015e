"""The device registry and device credentials."""
