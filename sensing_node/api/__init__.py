"""HTTP API for operators (aiohttp)."""
