"""Client SDK for the gateway (sync and asyncio)."""
