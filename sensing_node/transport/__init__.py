"""asyncio adapters around the sans-I/O cores: bytes in, events and bytes out."""
