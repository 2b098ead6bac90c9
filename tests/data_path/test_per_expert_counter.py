"""The per-expert token counter (eaas_*_tokens_routed_total) counts the same inside and outside inference mode."""

from __future__ import annotations

import torch

from eaas.rpc.metrics import PerExpertTokenCounter


def test_counts_grow_and_add_up_in_and_out_of_inference_mode():
    counter = PerExpertTokenCounter("eaas_test_tokens_routed_total", "test", registry=None)
    with torch.inference_mode():  # how the engine calls it: the tally first grows here
        counter.add(torch.tensor([[0, 3]], dtype=torch.int32))
    counter.add(torch.tensor([[3, 1], [-1, 3]]))  # outside inference mode (a tool, a test), the tally not growing
    with torch.inference_mode():
        counter.add(torch.tensor([[7, 5]]))
    counter.add(torch.tensor([[-1, -1]]))  # no expert: nothing counted
    counter.add(torch.tensor([[0, 7]]))  # outside again, after it grew inside
    assert counter.counts() == [2, 1, 0, 3, 0, 1, 0, 2]
    family = next(iter(counter.collect()))
    assert {s.labels["expert"]: s.value for s in family.samples} == {"0": 2, "1": 1, "3": 3, "5": 1, "7": 2}
