"""The SDK against a real gateway: async and sync clients, failover past a dead address, deadlines, errors."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hf_checkpoints import write_hf_checkpoint
from servers import free_port

from eaas.client import AsyncClient, GenerationError, SyncClient


@pytest.mark.slow
def test_async_and_sync_clients_stream_the_same_tokens_and_skip_a_dead_gateway(tmp_path, up_fleet):
    write_hf_checkpoint(tmp_path / "m", "olmoe", seed=11, with_tokenizer=True)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: UNAVAILABLE, then the next address

    async def run_async():
        async with AsyncClient([dead, fleet.gateways[0]], timeout=60) as client:
            chunks = [c async for c in client.generate_stream(prompt_ids=[4, 5, 6], max_tokens=6, ignore_eos=True)]
            text = await client.generate(prompt="hi", max_tokens=3, ignore_eos=True)
            info = await client.info()
        return chunks, text, info

    chunks, text, info = asyncio.run(run_async())
    assert [c.index for c in chunks] == list(range(6)) and chunks[-1].finish_reason == "length"
    assert len(text.token_ids) == 3
    assert info.model_type == "olmoe" and info.num_experts == 8
    with SyncClient([dead, fleet.gateways[0]], timeout=60) as client:
        assert client.generate(prompt_ids=[4, 5, 6], max_tokens=6, ignore_eos=True).token_ids == \
            [t for c in chunks for t in c.token_ids]
        with pytest.raises(GenerationError) as bad:
            client.generate(prompt_ids=[4, 99999], max_tokens=2)
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "vocabulary" in bad.value.details
    with SyncClient([fleet.gateways[0]], timeout=0.05) as hurried:
        with pytest.raises(GenerationError) as late:
            hurried.generate(prompt_ids=list(range(1, 200)), max_tokens=200, ignore_eos=True)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
