"""The aiohttp application's HTTP side: pages, API, health, security."""
