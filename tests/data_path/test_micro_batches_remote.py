"""Two micro-batches over real expert servers: they take turns at every MoE layer and change no token."""

from __future__ import annotations

import pytest

from eaas.engine.factory import engine_with_backend, monolithic_engine
from eaas.engine.sequence import SamplingParams
from eaas.gateway.remote_backend import RemoteExpertBackend
from eaas.model.checkpoint import Checkpoint
from eaas.rpc.slot_transport import make_transport
from expert_cluster import ExpertServer, start_servers, tiny_mixtral


class RecordingTransport:
    """The real transport, noting the MoE layer of every request it sends, in order."""

    def __init__(self, inner):
        self.inner, self.layers = inner, []

    def combine(self, address, request, timeout):
        self.layers.append(request.layer)
        return self.inner.combine(address, request, timeout)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def run_to_the_end(engine, prompts, params, after_step=lambda steps: None):
    """(the sequences, the number of steps) of prompts run to completion; after_step(n) after step n."""
    seqs = [engine.add_request(p, params).seq for p in prompts]
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        after_step(steps)
    return seqs, steps


@pytest.fixture(scope="module")
def servers():
    started = start_servers([ExpertServer(tiny_mixtral(), e) for e in ("0-3", "4-7")])
    yield started
    for s in started:
        s.close()


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_two_micro_batches_take_turns_and_give_the_monolithic_tokens(transport, servers):
    ckpt = Checkpoint(tiny_mixtral())
    recording = RecordingTransport(make_transport(transport))
    backend = RemoteExpertBackend([((0, 1, 2, 3), [servers[0].address]), ((4, 5, 6, 7), [servers[1].address])],
                                  fingerprint=ckpt.fingerprint(), layers=ckpt.moe_layers(), transport=recording)
    try:
        engine = engine_with_backend(ckpt, backend, micro_batches=2, micro_batch_min_tokens=1)
        prompts = [[i + 3] * (i % 5 + 2) for i in range(6)]
        params = SamplingParams(max_tokens=5, ignore_eos=True)
        seqs, steps = run_to_the_end(engine, prompts, params)
    finally:
        backend.close()
    expected = monolithic_engine(tiny_mixtral()).generate(prompts, params)
    assert [s.output_ids for s in seqs] == expected
    # Every step ran as 2 micro-batches over layers 0..2. Taking turns, both send layer L before either
    # sends layer L + 1, so the layer sequence drops back once per step; one after the other, twice.
    drops = sum(1 for a, b in zip(recording.layers, recording.layers[1:]) if b < a)
    assert drops == steps - 1, recording.layers[:40]


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_a_replica_killed_while_micro_batches_take_turns_changes_no_token(transport):
    """SIGKILL one replica of a group mid-generation, with two micro-batches in flight at every layer: the
    requests it held are re-sent to its twin, and every sequence gets the monolithic tokens."""
    ckpt = Checkpoint(tiny_mixtral())
    low_a, low_b, high = start_servers([ExpertServer(tiny_mixtral(), e) for e in ("0-3", "0-3", "4-7")])
    backend = RemoteExpertBackend([((0, 1, 2, 3), [low_a.address, low_b.address]), ((4, 5, 6, 7), [high.address])],
                                  fingerprint=ckpt.fingerprint(), layers=ckpt.moe_layers(),
                                  transport=make_transport(transport), rpc_timeout_s=5, probe_interval_s=0.2)
    try:
        engine = engine_with_backend(ckpt, backend, micro_batches=2, micro_batch_min_tokens=1)
        prompts = [[i + 5] * (i % 4 + 3) for i in range(8)]
        params = SamplingParams(max_tokens=40, ignore_eos=True)
        # after 10 steps both replicas of the low group have been serving: kill one, between two steps
        seqs, _ = run_to_the_end(engine, prompts, params, lambda steps: steps == 10 and low_a.kill())
        assert low_a.proc.poll() is not None and backend.replica_states()[low_a.address] == "quarantined"
    finally:
        backend.close()
        for server in (low_a, low_b, high):
            server.close()
    assert [s.output_ids for s in seqs] == monolithic_engine(tiny_mixtral()).generate(prompts, params)
