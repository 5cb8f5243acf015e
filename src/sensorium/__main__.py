"""`python -m sensorium` runs the CLI."""

from sensorium.cli import app

app()
