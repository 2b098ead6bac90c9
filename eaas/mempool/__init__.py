"""MemPool: KV-cache blocks, expert registry and load statistics (Redis or in-process)."""
