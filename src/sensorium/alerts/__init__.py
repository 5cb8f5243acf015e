"""Alert rules, their evaluation as readings arrive, and notifications."""
