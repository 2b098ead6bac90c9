"""Micro-batching on the expert server: a batch of requests equals each request computed alone.

bfloat16: bit-identical (checked). float32 on MKL: an expert's matmul over M rows takes a different kernel
for small M (M < 12 and not a multiple of 4 here), so a row's last bits can depend on which other requests
shared the batch; the difference is float rounding (~1e-6 relative), asserted below as the bound.
"""

from __future__ import annotations

import pytest
import torch

from eaas.expert_service.batcher import CombineBatcher
from eaas.expert_service.combine_request import CombineJob
from eaas.model.checkpoint import Checkpoint
from eaas.model.experts import load_expert_weights
from expert_cluster import tiny_mixtral


def _job(layer: int, tokens: int, dtype: torch.dtype, gen: torch.Generator) -> CombineJob:
    hidden = torch.randn(tokens, 64, generator=gen).to(dtype)
    ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(tokens)]).to(torch.int32)
    ids[ids >= 4] = -1  # this server holds experts 0-3; other slots belong to another group
    weights = torch.rand(tokens, 2, generator=gen).to(dtype)
    return CombineJob(layer, hidden, ids, weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_combine_equals_each_request_alone(dtype):
    experts = load_expert_weights(Checkpoint(tiny_mixtral()), [0, 1, 2, 3], dtype=dtype)
    batcher = CombineBatcher(experts, torch.device("cpu"))
    try:
        gen = torch.Generator().manual_seed(1)
        jobs = [_job(1, tokens, dtype, gen) for tokens in (1, 3, 64, 7, 128, 2)]
        batched = batcher.combine_jobs(jobs)
        for job, out in zip(jobs, batched):
            alone = experts.combine(job.layer, job.hidden, job.expert_ids, job.weights)
            assert out.dtype == dtype and out.shape == job.hidden.shape
            if dtype == torch.bfloat16:
                assert torch.equal(out, alone), (job.tokens, (out - alone).abs().max())
            else:
                torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-8)
    finally:
        batcher.close()
