"""Storing and reading device readings."""
