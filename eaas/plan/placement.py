"""Which expert ids each group hosts: contiguous ids (eaas.topology) or co-hot/co-activating experts (ExFlow).

A group hosts the same ids in every MoE layer (eaas/topology.py), so placement is a partition of ids.
Co-hot placement learns from popularity recorded before the trace: it seeds a group with the hottest
unplaced expert and fills it with the unplaced experts whose load moved most like it (correlation of log
shares over time). Experts that rise and fall together then need scaling together, in fewer groups, and
(when they also co-activate, as clusters do in the skew model) a token's top-k touches fewer groups.
"""

from __future__ import annotations

import numpy as np

from eaas.topology import expert_groups


def contiguous_placement(experts: int, per_group: int) -> np.ndarray:
    """group_of[expert] for ids split into contiguous runs (what the operator does today)."""
    group_of = np.empty(experts, dtype=np.int64)
    for g in expert_groups(experts, per_group):
        group_of[list(g.experts)] = g.index
    return group_of


def cohot_placement(history: np.ndarray, per_group: int) -> np.ndarray:
    """group_of[expert] grouping experts whose recorded shares (history [minutes, experts]) move together."""
    experts = history.shape[1]
    logs = np.log(np.maximum(history, 1e-12))
    logs = logs - logs.mean(axis=0)
    norms = np.linalg.norm(logs, axis=0)
    corr = (logs.T @ logs) / np.maximum(np.outer(norms, norms), 1e-12)
    heat = history.mean(axis=0)
    group_of = np.full(experts, -1, dtype=np.int64)
    group = 0
    while (group_of < 0).any():
        free = np.flatnonzero(group_of < 0)
        seed = free[np.argmax(heat[free])]
        mates = free[free != seed]
        mates = mates[np.argsort(-corr[seed, mates], kind="stable")][: per_group - 1]
        group_of[seed] = group
        group_of[mates] = group
        group += 1
    return group_of


def group_shares(shares: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """[..., experts] -> [..., groups]: a group's share is the sum over its experts."""
    groups = int(group_of.max()) + 1
    out = np.zeros(shares.shape[:-1] + (groups,))
    for g in range(groups):
        out[..., g] = shares[..., group_of == g].sum(axis=-1)
    return out


def _pick_probabilities(shares: np.ndarray, group_of: np.ndarray, cluster_of: np.ndarray, affinity: float):
    """(cluster weights pi[c], q[c, g] = P(one top-k pick lands on group g | the token's cluster is c))."""
    groups = int(group_of.max()) + 1
    if (cluster_of < 0).any() or affinity <= 0:
        return np.ones(1), group_shares(shares, group_of)[None, :]
    clusters = int(cluster_of.max()) + 1
    within = np.zeros((clusters, groups))
    np.add.at(within, (cluster_of, group_of), shares)
    pi = within.sum(axis=1)
    q = affinity * within / np.maximum(pi[:, None], 1e-300) + (1 - affinity) * within.sum(axis=0)[None, :]
    return pi, q


def groups_hit_per_layer(batch_tokens: float, top_k: int, shares: np.ndarray, group_of: np.ndarray,
                         cluster_of: np.ndarray, affinity: float) -> float:
    """Expected groups that receive at least one of `batch_tokens` tokens' top-k picks in a layer: RPCs."""
    pi, q = _pick_probabilities(shares, group_of, cluster_of, affinity)
    miss_one_token = (pi[:, None] * (1 - q) ** top_k).sum(axis=0)
    return float((1 - miss_one_token ** batch_tokens).sum())


def group_affinity(shares: np.ndarray, group_of: np.ndarray, cluster_of: np.ndarray, affinity: float) -> np.ndarray:
    """A[g, g']: P(a pick on group g in one layer is followed by a pick on g' in the next), the token's
    cluster persisting across layers; identity-free uniform rows when clusters are unknown."""
    pi, q = _pick_probabilities(shares, group_of, cluster_of, affinity)
    joint_cg = pi[:, None] * q                     # P(c, pick on g)
    p_c_given_g = joint_cg / np.maximum(joint_cg.sum(axis=0, keepdims=True), 1e-300)
    return p_c_given_g.T @ q
