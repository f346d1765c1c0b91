"""The one map between Hugging Face tensor names/layouts and the `Llama` module's parameters.

Loading (HF directory, GGUF) and export (`to_hf_state_dict`) both iterate `param_specs`, so a
name or layout is defined exactly once. HF stores linear weights torch-style `[out, in]`; our
`nnx.Linear` kernels are `[in, out]` (`transpose=True`).
"""
from __future__ import annotations

import dataclasses

from se_jax.models.llama import LlamaConfig


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter: its HF name and shape, and its path in the NNX state."""
    hf_name: str                 # e.g. "model.layers.0.self_attn.q_proj.weight"
    path: tuple                  # e.g. ("layers", 0, "self_attn", "q_proj", "kernel")
    hf_shape: tuple[int, ...]    # shape in the HF checkpoint (torch layout)
    transpose: bool              # HF [out, in] <-> ours [in, out]


def _linear(prefix_hf: str, path: tuple, n_in: int, n_out: int, bias: bool) -> list[ParamSpec]:
    specs = [ParamSpec(f"{prefix_hf}.weight", path + ("kernel",), (n_out, n_in), True)]
    if bias:
        specs.append(ParamSpec(f"{prefix_hf}.bias", path + ("bias",), (n_out,), False))
    return specs


def param_specs(config: LlamaConfig) -> list[ParamSpec]:
    """Every parameter of `Llama(config)`, in checkpoint order."""
    c = config
    e, q, kv, m = (c.hidden_size, c.num_attention_heads * c.head_dim,
                   c.num_key_value_heads * c.head_dim, c.intermediate_size)
    specs = [ParamSpec("model.embed_tokens.weight", ("embed_tokens", "embedding"),
                       (c.vocab_size, e), False)]
    for i in range(c.num_hidden_layers):
        hf, p = f"model.layers.{i}", ("layers", i)
        specs.append(ParamSpec(f"{hf}.input_layernorm.weight",
                               p + ("input_layernorm", "weight"), (e,), False))
        for name, n_in, n_out, bias in (("q_proj", e, q, c.attention_bias),
                                        ("k_proj", e, kv, c.attention_bias),
                                        ("v_proj", e, kv, c.attention_bias),
                                        ("o_proj", q, e, c.o_proj_bias)):
            specs += _linear(f"{hf}.self_attn.{name}", p + ("self_attn", name), n_in, n_out, bias)
        specs.append(ParamSpec(f"{hf}.post_attention_layernorm.weight",
                               p + ("post_attention_layernorm", "weight"), (e,), False))
        for name, n_in, n_out in (("gate_proj", e, m), ("up_proj", e, m), ("down_proj", m, e)):
            specs += _linear(f"{hf}.mlp.{name}", p + ("mlp", name), n_in, n_out, c.mlp_bias)
    specs.append(ParamSpec("model.norm.weight", ("norm", "weight"), (e,), False))
    if not c.tie_word_embeddings:
        specs += _linear("lm_head", ("lm_head",), e, c.vocab_size, False)
    return specs


# GGUF (llama.cpp) tensor names -> HF names, per layer ("blk.N.") and global.
GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GGUF_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                     "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def gguf_to_hf_name(name: str) -> str | None:
    """HF name of a GGUF tensor, or None for tensors the decoder does not use (rope_freqs)."""
    if name.startswith("blk."):
        _, layer, rest = name.split(".", 2)
        hf = GGUF_LAYER_NAMES.get(rest)
        return f"model.layers.{layer}.{hf}" if hf else None
    return GGUF_GLOBAL_NAMES.get(name)
