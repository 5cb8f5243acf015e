"""Device control: desired/reported state, one-shot commands, and declared UI controls."""
