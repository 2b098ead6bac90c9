"""A MemPool write its full backlog refuses is dropped and counted; the stream is served as without a pool."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from eaas.engine.factory import monolithic_engine
from eaas.engine.sequence import SamplingParams
from eaas.gateway.engine_service import EngineService
from eaas.mempool import KVPool, SyncKVPool
from eaas.model.checkpoint import Checkpoint
from eaas.model.tiny import write_tiny_model

pytestmark = pytest.mark.asyncio


def backlog_refusals() -> float:
    return REGISTRY.get_sample_value("eaas_mempool_errors_total", {"kind": "backlog"}) or 0.0


async def test_a_write_the_full_backlog_refuses_is_dropped_and_counted(tmp_path):
    model = write_tiny_model(tmp_path / "m", "mixtral", seed=3)
    fingerprint = Checkpoint(model).fingerprint()
    pool = SyncKVPool(lambda: KVPool.from_url(None, fingerprint=fingerprint, block_size=4), max_pending=0)
    svc = EngineService(monolithic_engine(model), None, pool)  # every write finds the backlog full
    svc.start()
    prompt, params = [11, 42, 7, 99, 3, 250, 18, 64, 5, 77], SamplingParams(max_tokens=8, ignore_eos=True)
    before = backlog_refusals()
    try:
        tokens = [t async for event in svc.generate(prompt, params) for t in event.token_ids]
        assert tokens == monolithic_engine(model).generate([prompt], params)[0]
        # 17 tokens cached at the end, offered as blocks 0-1 (the prefill), 2, then 3: three writes refused
        assert backlog_refusals() - before == 3
        assert (await pool.match_async(prompt + tokens))[0] == 0  # nothing stored, nothing kept for later
    finally:
        svc.stop()
        pool.close()
