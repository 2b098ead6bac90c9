"""The combine's two FFN paths (padded bmm, one matmul per expert) and the rule that picks between them."""

import pytest
import torch

from eaas.model import experts as experts_mod
from eaas.model.experts import ExpertWeights, LayerExperts, _use_padded_grid

NUM_EXPERTS, HIDDEN, FFN = 16, 32, 48


def make_weights(held: list[int]) -> ExpertWeights:
    g = torch.Generator().manual_seed(0)
    slot_of = torch.full((NUM_EXPERTS + 1,), -1, dtype=torch.long)
    slot_of[held] = torch.arange(len(held))
    layer = LayerExperts(held, torch.randn(len(held), HIDDEN, 2 * FFN, generator=g) * 0.1,
                         torch.randn(len(held), FFN, HIDDEN, generator=g) * 0.1, slot_of)
    return ExpertWeights({0: layer}, NUM_EXPERTS, HIDDEN, "silu", torch.float32)


def reference(weights: ExpertWeights, hidden, ids, gates) -> torch.Tensor:
    """Token by token, slot by slot: the definition in the module docstring."""
    lx = weights.layers[0]
    out = torch.zeros_like(hidden)
    for t in range(hidden.shape[0]):
        for j in range(ids.shape[1]):
            slot = int(lx.slot_of[int(ids[t, j])]) if int(ids[t, j]) >= 0 else -1
            if slot >= 0:
                gate, up = (hidden[t] @ lx.gate_up[slot]).chunk(2)
                out[t] += gates[t, j] * ((torch.nn.functional.silu(gate) * up) @ lx.down[slot])
    return out


def routed(tokens: int, skewed: bool):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(tokens, NUM_EXPERTS, generator=g)
    if skewed:
        logits[:, 3] += 10.0  # every token picks expert 3 first
    ids = logits.topk(2, dim=-1).indices
    ids[::5, 1] = -1  # some slots routed nowhere
    return torch.randn(tokens, HIDDEN, generator=g), ids, torch.softmax(torch.randn(tokens, 2, generator=g), -1)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("skewed", [False, True], ids=["balanced", "skewed"])
@pytest.mark.parametrize("grouped", [True, False], ids=["grouped_mm", "loop"])
def test_both_paths_match_the_definition(monkeypatch, padded, skewed, grouped):
    if not grouped:
        monkeypatch.setattr(experts_mod, "_grouped_mm", None)  # as on CUDA or torch < 2.10
    weights = make_weights(held=[0, 1, 3, 5, 8, 13])  # a server's share: the other experts are masked
    hidden, ids, gates = routed(40, skewed)
    chosen = []
    monkeypatch.setattr(experts_mod, "_use_padded_grid", lambda counts, *_: chosen.append(counts) or padded)
    out = weights.combine(0, hidden, ids, gates)
    assert chosen, "the combine did not consult the path rule"
    torch.testing.assert_close(out, reference(weights, hidden, ids, gates), rtol=1e-5, atol=1e-5)


def test_rule_pads_balanced_decode_batches():
    assert _use_padded_grid([8, 9, 7, 8, 8, 10, 6, 8], ffn_weights=128 * 192)      # 8 experts, 64 pairs
    assert _use_padded_grid([4, 5, 3, 4] * 16, ffn_weights=128 * 192)              # 64 experts, 256 pairs


def test_rule_loops_when_one_expert_is_hot():
    assert not _use_padded_grid([200, 8, 9, 7, 8, 10, 6, 8], ffn_weights=128 * 192)
    assert not _use_padded_grid([200, 8, 9, 7, 8, 10, 6, 8], ffn_weights=128 * 192, unpadded="loop")


def test_a_python_loop_of_matmuls_gets_more_padding_than_grouped_mm():
    counts = [3, 1, 1, 1, 0, 0, 0, 0] * 8  # 64 experts, 48 pairs, 32 hit: a grid of 192 rows
    assert not _use_padded_grid(counts, ffn_weights=128 * 192, unpadded="grouped")
    assert _use_padded_grid(counts, ffn_weights=128 * 192, unpadded="loop")


def test_rule_weighs_per_expert_overhead_against_expert_size():
    sparse = [2] + [1] * 62 + [0] * 65  # 128 experts, 63 hit: a grid of 256 rows for 64 real ones
    assert _use_padded_grid(sparse, ffn_weights=128 * 192)       # small experts: 63 per-expert calls cost more
    assert not _use_padded_grid(sparse, ffn_weights=1024 * 4096)  # big experts: padding costs more


def test_bfloat16_paths_are_bit_identical(monkeypatch):
    """The expert server promises a request's bf16 result does not depend on its batch-mates, and a batch
    may take the other path than the request alone would."""
    weights = make_weights(held=[0, 1, 3, 5, 8, 13])
    lx = weights.layers[0]
    lx.gate_up, lx.down = lx.gate_up.bfloat16(), lx.down.bfloat16()
    hidden, ids, gates = routed(40, skewed=True)
    outs = []
    for padded, grouped in ((True, experts_mod._grouped_mm), (False, experts_mod._grouped_mm), (False, None)):
        monkeypatch.setattr(experts_mod, "_grouped_mm", grouped)
        monkeypatch.setattr(experts_mod, "_use_padded_grid", lambda *_, padded=padded: padded)
        outs.append(weights.combine(0, hidden.bfloat16(), ids, gates.bfloat16()))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
