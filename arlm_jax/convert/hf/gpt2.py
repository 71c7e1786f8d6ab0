"""GPT-2 (``GPT2LMHeadModel``) <-> our Transformer with learned positions, LayerNorm, tanh-GELU.

HF's tensors (names under ``transformer.``; the original OpenAI upload has no prefix). GPT-2
uses ``Conv1D`` layers, whose weight is stored [in, out], the orientation of ours:
  wte [V, D], wpe [P, D], ln_f.{weight,bias} [D]
  h.i.ln_1 / ln_2 .{weight,bias} [D]
  h.i.attn.c_attn.weight [D, 3D] (q, k, v side by side; each [D, H*E]), .bias [3D]
  h.i.attn.c_proj.weight [H*E, D], .bias [D]
  h.i.mlp.c_fc.weight [D, F], .bias [F];  h.i.mlp.c_proj.weight [F, D], .bias [D]
  lm_head.weight [V, D] (only when untied)
  h.i.attn.bias, h.i.attn.masked_bias: causal-mask buffers of old uploads, not weights
A model with ``bias=False`` exports with zero biases, which GPT-2 computes the same way.
"""

from __future__ import annotations

import numpy as np

from arlm_jax.convert.hf.common import Arch, canonical, field, refuse, shared_refusals, stacked
from arlm_jax.models.transformer.config import TransformerConfig

TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all three: the tanh approximation


def config_from_hf(hf: dict) -> TransformerConfig:
    act = field(hf, "activation_function", "gelu_new", kind=str)
    if act not in TANH_GELUS:
        refuse(hf, "activation_function", act, f"arlm_jax's GELU is the tanh approximation: {', '.join(TANH_GELUS)}")
    for name, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False)):
        if field(hf, name, want, kind=bool) != want:
            refuse(hf, name, hf[name], f"arlm_jax's GPT-2 has {name}={want}")
    d, h = field(hf, "n_embd"), field(hf, "n_head")
    return canonical(TransformerConfig(
        vocab_size=field(hf, "vocab_size"), n_layers=field(hf, "n_layer"), n_heads=h, d_model=d,
        d_ff=field(hf, "n_inner", 4 * d), max_len=field(hf, "n_positions", field(hf, "n_ctx", 1024)),
        pos="learned", norm="layernorm", mlp="gelu", bias=True,
        tie_embeddings=field(hf, "tie_word_embeddings", True, kind=bool),
        norm_eps=field(hf, "layer_norm_epsilon", 1e-5, kind=float),
        dropout=field(hf, "resid_pdrop", 0.0, kind=float),  # applied in training only, as HF's
        init_std=field(hf, "initializer_range", 0.02, kind=float)))


def _prefix(t) -> str:
    return "transformer." if "transformer.wte.weight" in t else ""


def params_from_hf(t, cfg: TransformerConfig) -> dict:
    L, D, H, E, F, V = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.ff_dim, cfg.vocab_size
    p = _prefix(t)

    def layer(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return stacked(L, lambda i: t.get(f"{p}h.{i}.{name}", shape))

    qkv = layer("attn.c_attn.weight", (D, 3 * D)).reshape(L, D, 3, H, E)
    qkv_b = layer("attn.c_attn.bias", (3 * D,)).reshape(L, 3, H, E)
    params = {
        "embed": {"tok": t.get(f"{p}wte.weight", (V, D)), "pos": t.get(f"{p}wpe.weight", (cfg.max_len, D))},
        "blocks": {
            "attn_norm": {"scale": layer("ln_1.weight", (D,)), "bias": layer("ln_1.bias", (D,))},
            "attn": {"wq": qkv[:, :, 0], "wk": qkv[:, :, 1], "wv": qkv[:, :, 2],
                     "bq": qkv_b[:, 0], "bk": qkv_b[:, 1], "bv": qkv_b[:, 2],
                     "wo": layer("attn.c_proj.weight", (D, D)).reshape(L, H, E, D),
                     "bo": layer("attn.c_proj.bias", (D,))},
            "mlp_norm": {"scale": layer("ln_2.weight", (D,)), "bias": layer("ln_2.bias", (D,))},
            "mlp": {"w_in": layer("mlp.c_fc.weight", (D, F)), "b_in": layer("mlp.c_fc.bias", (F,)),
                    "w_out": layer("mlp.c_proj.weight", (F, D)), "b_out": layer("mlp.c_proj.bias", (D,))},
        },
        "final_norm": {"scale": t.get(f"{p}ln_f.weight", (D,)), "bias": t.get(f"{p}ln_f.bias", (D,))},
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = {"w": t.get("lm_head.weight", (V, D)).T}
    elif "lm_head.weight" in t:
        t.get("lm_head.weight", (V, D))  # a tied copy some uploads keep: read, so it is accounted for
    return params


def exportable(cfg: TransformerConfig) -> list[str]:
    out = shared_refusals(cfg, "GPT-2")
    if cfg.kv_heads != cfg.n_heads:
        out.append(f"model.n_kv_heads={cfg.n_kv_heads} (GPT-2 has no grouped kv heads)")
    return out


def config_to_hf(cfg: TransformerConfig) -> dict:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
            "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_embd": cfg.d_model, "n_inner": cfg.ff_dim,
            "n_positions": cfg.max_len, "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps, "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tie_embeddings, "scale_attn_weights": True,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout}


def params_to_hf(params: dict, cfg: TransformerConfig) -> dict[str, np.ndarray]:
    L, D, F = cfg.n_layers, cfg.d_model, cfg.ff_dim
    b = params["blocks"]
    zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    a, m = b["attn"], b["mlp"]
    qkv = np.concatenate([a[w].reshape(L, D, D) for w in ("wq", "wk", "wv")], axis=-1)
    qkv_b = (np.concatenate([a[w].reshape(L, D) for w in ("bq", "bk", "bv")], axis=-1) if "bq" in a
             else zeros(L, 3 * D))
    out = {"transformer.wte.weight": params["embed"]["tok"],
           "transformer.wpe.weight": params["embed"]["pos"],
           "transformer.ln_f.weight": params["final_norm"]["scale"],
           "transformer.ln_f.bias": params["final_norm"].get("bias", zeros(D))}
    for i in range(L):
        h = f"transformer.h.{i}."
        out |= {h + "ln_1.weight": b["attn_norm"]["scale"][i],
                h + "ln_1.bias": b["attn_norm"]["bias"][i] if "bias" in b["attn_norm"] else zeros(D),
                h + "attn.c_attn.weight": qkv[i], h + "attn.c_attn.bias": qkv_b[i],
                h + "attn.c_proj.weight": a["wo"][i].reshape(D, D),
                h + "attn.c_proj.bias": a["bo"][i] if "bo" in a else zeros(D),
                h + "ln_2.weight": b["mlp_norm"]["scale"][i],
                h + "ln_2.bias": b["mlp_norm"]["bias"][i] if "bias" in b["mlp_norm"] else zeros(D),
                h + "mlp.c_fc.weight": m["w_in"][i], h + "mlp.c_fc.bias": m["b_in"][i] if "b_in" in m else zeros(F),
                h + "mlp.c_proj.weight": m["w_out"][i],
                h + "mlp.c_proj.bias": m["b_out"][i] if "b_out" in m else zeros(D)}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["lm_head"]["w"].T
    return out


ARCH = Arch(model_type="gpt2", architecture="GPT2LMHeadModel", config_from_hf=config_from_hf,
            params_from_hf=params_from_hf, ignorable=(".attn.bias", ".attn.masked_bias"),
            exportable=exportable, config_to_hf=config_to_hf, params_to_hf=params_to_hf)
