"""Over-the-air updates: the firmware registry, rollouts and per-device update jobs."""
