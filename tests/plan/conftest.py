"""A small deployment and a user-table service profile for the planner's tests (no measurement)."""

from __future__ import annotations

import pytest

from eaas.plan.service import profile_from_dict

# a GPU-like table: an RPC costs 1 ms up to 64 pairs, then 10 us per extra pair
TABLE = {"name": "test-table",
         "expert_call_s": {"batch": [1, 64, 1064], "seconds": [0.001, 0.001, 0.011]},
         "gateway_layer_s": {"batch": [1, 256], "seconds": [0.0005, 0.001]}}


@pytest.fixture
def profile():
    return profile_from_dict(TABLE, "test table")
