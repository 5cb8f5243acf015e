"""Energy: sites, tariffs, and kWh/cost figures from power and energy readings."""
