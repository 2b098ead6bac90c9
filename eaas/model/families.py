"""The MoE families eaas serves: how each names its routed experts on disk and in memory.

Routing (softmax/sigmoid, group-limited top-k, shared experts, scaling) stays in transformers' own
sparse-MoE blocks; eaas only replaces `layer.mlp.experts`, whose call signature
`experts(hidden_states, top_k_index, top_k_weights)` is the same in every family below.
"""

from __future__ import annotations

from dataclasses import dataclass

from eaas.errors import UserError


@dataclass(frozen=True)
class Family:
    model_type: str
    causal_lm_class: str          # transformers class name
    expert_prefix: str            # on-disk prefix of layer L's routed experts, "{L}" filled in
    gate_name: str                # per-expert tensor names: gate, up, down projections
    up_name: str
    down_name: str
    disk_to_module_renames: tuple[tuple[str, str], ...] = ()  # substring renames of non-expert keys

    def expert_key(self, layer: int, expert: int, proj: str) -> str:
        name = {"gate": self.gate_name, "up": self.up_name, "down": self.down_name}[proj]
        return f"{self.expert_prefix.format(L=layer)}.{expert}.{name}.weight"

    def is_routed_expert_key(self, key: str) -> bool:
        return ".experts." in key and (".mlp.experts." in key or ".block_sparse_moe.experts." in key)

    def module_key(self, disk_key: str) -> str:
        for old, new in self.disk_to_module_renames:
            disk_key = disk_key.replace(old, new)
        return disk_key


_STANDARD = dict(expert_prefix="model.layers.{L}.mlp.experts", gate_name="gate_proj", up_name="up_proj", down_name="down_proj")

FAMILIES: dict[str, Family] = {
    "mixtral": Family("mixtral", "MixtralForCausalLM", "model.layers.{L}.block_sparse_moe.experts", "w1", "w3", "w2",
                      disk_to_module_renames=((".block_sparse_moe.", ".mlp."),)),
    "qwen2_moe": Family("qwen2_moe", "Qwen2MoeForCausalLM", **_STANDARD),
    "qwen3_moe": Family("qwen3_moe", "Qwen3MoeForCausalLM", **_STANDARD),
    "olmoe": Family("olmoe", "OlmoeForCausalLM", **_STANDARD),
    "deepseek_v3": Family("deepseek_v3", "DeepseekV3ForCausalLM", **_STANDARD),
}


def family_for(model_type: str | None) -> Family:
    if model_type not in FAMILIES:
        raise UserError(f"unsupported architecture {model_type!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def num_routed_experts(config) -> int:
    for attr in ("num_local_experts", "num_experts", "n_routed_experts"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    raise UserError(f"config of {config.model_type!r} names no routed-expert count")
