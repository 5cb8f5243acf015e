"""The fleet simulator: registered devices sending realistic readings over MQTT or HTTP,
offline spells and backfill included, many of them from one asyncio process."""
