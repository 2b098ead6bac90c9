"""Client SDK for the gateway: `SyncClient` and `AsyncClient` (streaming, deadlines, failover with resume).

    from eaas.client import SyncClient
    with SyncClient(["127.0.0.1:50050", "127.0.0.1:50060"]) as c:
        print(c.generate(prompt_ids=[1, 17, 42], max_tokens=8).token_ids)
"""

from eaas.client.async_client import AsyncClient
from eaas.client.common import Chunk, Completion, GenerationError, TokenLogprob
from eaas.client.sync_client import SyncClient

__all__ = ["AsyncClient", "Chunk", "Completion", "GenerationError", "SyncClient", "TokenLogprob"]
