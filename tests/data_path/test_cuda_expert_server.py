"""An expert server computing on CUDA (`--device cuda`), over both transports: the combine it returns is the
one the same experts compute on the same GPU in this process. Runs only where CUDA exists (skipped here: the
project's CI machine has no GPU); the tensors cross host memory on both transports (README, issue 12)."""

from __future__ import annotations

import pytest
import torch

from eaas.expert_service.server import move_experts
from eaas.gateway.remote_backend import RemoteExpertBackend
from eaas.model.checkpoint import Checkpoint
from eaas.model.experts import load_expert_weights
from eaas.rpc.slot_transport import make_transport
from expert_cluster import ExpertServer, start_servers, tiny_mixtral

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_server():
    servers = start_servers([ExpertServer(tiny_mixtral(), "0-7", "--device", "cuda")])
    yield servers[0]
    servers[0].close()


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_a_cuda_expert_server_returns_the_cuda_combine(transport, cuda_server):
    ckpt = Checkpoint(tiny_mixtral())
    local = load_expert_weights(ckpt)
    move_experts(local, torch.device("cuda"))
    backend = RemoteExpertBackend([(tuple(range(8)), [cuda_server.address])], fingerprint=ckpt.fingerprint(),
                                  layers=ckpt.moe_layers(), transport=make_transport(transport))
    try:
        gen = torch.Generator().manual_seed(0)
        for layer in ckpt.moe_layers():
            hidden = torch.randn(24, ckpt.config.hidden_size, generator=gen)
            ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(24)]).to(torch.int32)
            weights = torch.softmax(torch.randn(24, 2, generator=gen), dim=-1)
            expected = local.combine(layer, hidden.cuda(), ids.cuda(), weights.cuda()).cpu()
            assert torch.equal(backend.combine(layer, hidden, ids, weights), expected), layer
    finally:
        backend.close()
