"""LLaMA (``LlamaForCausalLM``) <-> our Transformer with RoPE, RMSNorm and SwiGLU, GQA, tied or
untied output, and optionally attention biases (``attention_bias``, our ``bias=True``).

HF's tensors, ``torch.nn.Linear`` weights stored [out, in] (ours are [in, out]):
  model.embed_tokens.weight [V, D], model.norm.weight [D], lm_head.weight [V, D] (untied)
  model.layers.i.input_layernorm.weight / post_attention_layernorm.weight [D]
  model.layers.i.self_attn.{q_proj [H*E, D], k_proj, v_proj [K*E, D], o_proj [D, H*E]}.weight
                          .{q,k,v,o}_proj.bias (attention_bias)
  model.layers.i.mlp.{gate_proj, up_proj [F, D], down_proj [D, F]}.weight

Rotary layout: HF's LLaMA rotates the two halves of each head (``rotate_half``: dimension j
pairs with j + E/2), as ``layers.apply_rope`` does, so q_proj and k_proj map to wq and wk with
no permutation. (Meta's original checkpoints pair dimensions 2j and 2j+1 instead; HF's own
conversion script permutes their rows into the half layout, so every HF upload is in it.) The
parity tests in tests/test_convert_hf.py check it against ``transformers``.
"""

from __future__ import annotations

import numpy as np

from arlm_jax.convert.hf.common import Arch, canonical, field, refuse, shared_refusals, stacked
from arlm_jax.models.transformer.config import TransformerConfig


def _rope_theta(hf: dict) -> float:
    """The RoPE base of either spelling: ``rope_parameters`` (transformers 5) or ``rope_theta``
    plus ``rope_scaling`` (4.x). Scaled variants (linear, dynamic, yarn, llama3, ...) are refused."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict):
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            refuse(hf, "rope_parameters.rope_type", kind, "arlm_jax's RoPE is unscaled: rope_type 'default'")
        return field(params, "rope_theta", 10000.0, kind=float)
    scaling = hf.get("rope_scaling")
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if kind != "default":
            refuse(hf, "rope_scaling", scaling, "arlm_jax's RoPE is unscaled")
    return field(hf, "rope_theta", 10000.0, kind=float)


def config_from_hf(hf: dict) -> TransformerConfig:
    act = field(hf, "hidden_act", "silu", kind=str)
    if act != "silu":
        refuse(hf, "hidden_act", act, "arlm_jax's SwiGLU gates with silu")
    if field(hf, "mlp_bias", False, kind=bool):
        refuse(hf, "mlp_bias", True, "arlm_jax's SwiGLU has no biases")
    for name in ("sliding_window", "use_sliding_window"):
        if hf.get(name):
            refuse(hf, name, hf[name], "arlm_jax attends over the whole context")
    d, h = field(hf, "hidden_size"), field(hf, "num_attention_heads")
    if d % h:
        refuse(hf, "num_attention_heads", h, f"hidden_size={d} must be a multiple of it")
    if field(hf, "head_dim", d // h) != d // h:
        refuse(hf, "head_dim", hf["head_dim"], f"arlm_jax's head_dim is hidden_size / num_attention_heads = {d // h}")
    return canonical(TransformerConfig(
        vocab_size=field(hf, "vocab_size"), n_layers=field(hf, "num_hidden_layers"), n_heads=h,
        n_kv_heads=field(hf, "num_key_value_heads", h), d_model=d, d_ff=field(hf, "intermediate_size"),
        max_len=field(hf, "max_position_embeddings", 2048), pos="rope", norm="rmsnorm", mlp="swiglu",
        bias=field(hf, "attention_bias", False, kind=bool),
        tie_embeddings=field(hf, "tie_word_embeddings", False, kind=bool), rope_theta=_rope_theta(hf),
        norm_eps=field(hf, "rms_norm_eps", 1e-6, kind=float),
        init_std=field(hf, "initializer_range", 0.02, kind=float)))


def params_from_hf(t, cfg: TransformerConfig) -> dict:
    L, D, H, K, E, F, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.ff_dim,
                           cfg.vocab_size)

    def layer(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return stacked(L, lambda i: t.get(f"model.layers.{i}.{name}", shape))

    def linear_in(name: str, n: int) -> np.ndarray:  # [n*E, D] -> [L, D, n, E]
        return layer(f"self_attn.{name}.weight", (n * E, D)).transpose(0, 2, 1).reshape(L, D, n, E)

    attn = {"wq": linear_in("q_proj", H), "wk": linear_in("k_proj", K), "wv": linear_in("v_proj", K),
            "wo": layer("self_attn.o_proj.weight", (D, H * E)).transpose(0, 2, 1).reshape(L, H, E, D)}
    if cfg.bias:
        attn |= {"bq": layer("self_attn.q_proj.bias", (H * E,)).reshape(L, H, E),
                 "bk": layer("self_attn.k_proj.bias", (K * E,)).reshape(L, K, E),
                 "bv": layer("self_attn.v_proj.bias", (K * E,)).reshape(L, K, E),
                 "bo": layer("self_attn.o_proj.bias", (D,))}
    params = {
        "embed": {"tok": t.get("model.embed_tokens.weight", (V, D))},
        "blocks": {
            "attn_norm": {"scale": layer("input_layernorm.weight", (D,))}, "attn": attn,
            "mlp_norm": {"scale": layer("post_attention_layernorm.weight", (D,))},
            "mlp": {"w_gate": layer("mlp.gate_proj.weight", (F, D)).transpose(0, 2, 1),
                    "w_up": layer("mlp.up_proj.weight", (F, D)).transpose(0, 2, 1),
                    "w_down": layer("mlp.down_proj.weight", (D, F)).transpose(0, 2, 1)},
        },
        "final_norm": {"scale": t.get("model.norm.weight", (D,))},
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = {"w": t.get("lm_head.weight", (V, D)).T}
    elif "lm_head.weight" in t:
        t.get("lm_head.weight", (V, D))  # a tied copy some uploads keep
    return params


def exportable(cfg: TransformerConfig) -> list[str]:
    return shared_refusals(cfg, "LLaMA")


def config_to_hf(cfg: TransformerConfig) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": cfg.vocab_size,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads, "hidden_size": cfg.d_model, "head_dim": cfg.head_dim,
            "intermediate_size": cfg.ff_dim, "max_position_embeddings": cfg.max_len, "hidden_act": "silu",
            "rms_norm_eps": cfg.norm_eps, "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.bias, "mlp_bias": False,
            "attention_dropout": 0.0, "pretraining_tp": 1,
            # both spellings: transformers 5 reads rope_parameters, 4.x rope_theta
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "rope_theta": cfg.rope_theta}


def params_to_hf(params: dict, cfg: TransformerConfig) -> dict[str, np.ndarray]:
    L, D = cfg.n_layers, cfg.d_model
    b = params["blocks"]
    a, m = b["attn"], b["mlp"]
    out = {"model.embed_tokens.weight": params["embed"]["tok"],
           "model.norm.weight": params["final_norm"]["scale"]}
    for i in range(L):
        h = f"model.layers.{i}."
        out |= {h + "input_layernorm.weight": b["attn_norm"]["scale"][i],
                h + "post_attention_layernorm.weight": b["mlp_norm"]["scale"][i],
                h + "mlp.gate_proj.weight": m["w_gate"][i].T, h + "mlp.up_proj.weight": m["w_up"][i].T,
                h + "mlp.down_proj.weight": m["w_down"][i].T}
        for w, proj in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj")):
            out[h + f"self_attn.{proj}.weight"] = a[w][i].reshape(D, -1).T
        out[h + "self_attn.o_proj.weight"] = a["wo"][i].reshape(-1, D).T
        if cfg.bias:
            for w, proj in (("bq", "q_proj"), ("bk", "k_proj"), ("bv", "v_proj")):
                out[h + f"self_attn.{proj}.bias"] = a[w][i].reshape(-1)
            out[h + "self_attn.o_proj.bias"] = a["bo"][i]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["lm_head"]["w"].T
    return out


ARCH = Arch(model_type="llama", architecture="LlamaForCausalLM", config_from_hf=config_from_hf,
            params_from_hf=params_from_hf, ignorable=(".rotary_emb.inv_freq",),
            exportable=exportable, config_to_hf=config_to_hf, params_to_hf=params_to_hf)
