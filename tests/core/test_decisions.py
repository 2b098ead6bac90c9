"""Pure decisions, each alone: scheduling, sampling, expert-group topology."""

from __future__ import annotations

import pytest
import torch

from eaas.engine.sampler import sample_next
from eaas.topology import expert_groups, format_expert_ids, parse_expert_ids


def test_greedy_is_argmax_and_sampling_is_seeded():
    logits = torch.tensor([0.1, 3.0, 0.2, 2.9])
    assert sample_next(logits, 0.0, 1.0, None) == 1
    draws = [sample_next(logits, 1.0, 1.0, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert len(set(draws)) == 1
    top_p = {sample_next(logits, 1.0, 0.4, torch.Generator().manual_seed(s)) for s in range(50)}
    assert top_p == {1}  # token 1 alone carries ~49% >= 40% of the mass
    wide = {sample_next(logits, 1.0, 1.0, torch.Generator().manual_seed(s)) for s in range(200)}
    assert {1, 3} <= wide


def test_expert_groups_cover_every_expert_once():
    groups = expert_groups(10, 4)
    assert [g.experts for g in groups] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [g.name for g in groups] == ["g0", "g1", "g2"]
    with pytest.raises(ValueError):
        expert_groups(8, 0)


def test_expert_id_ranges_round_trip():
    assert parse_expert_ids("0,1,4-7") == [0, 1, 4, 5, 6, 7]
    assert format_expert_ids([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_expert_ids(format_expert_ids([3, 9, 10, 11])) == [3, 9, 10, 11]
    for bad in ("", "3-1", "-2", "a"):
        with pytest.raises(ValueError):
            parse_expert_ids(bad)
