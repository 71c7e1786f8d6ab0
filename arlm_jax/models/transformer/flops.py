"""The Transformer's training FLOPs per token: its matmuls, attention's scores and the output layer."""

from __future__ import annotations

from arlm_jax.models.transformer.config import TransformerConfig


def matmul_params(cfg: TransformerConfig) -> int:
    """Weights that take part in matmuls: attention, MLP and the output projection (not lookups)."""
    D, F, L, V = cfg.d_model, cfg.ff_dim, cfg.n_layers, cfg.vocab_size
    attn = D * cfg.head_dim * (cfg.n_heads * 2 + cfg.kv_heads * 2)
    mlp = D * F * (3 if cfg.mlp == "swiglu" else 2)
    return L * (attn + mlp) + D * V


def flops_per_token(cfg: TransformerConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6·N + 12·L·D·T (PaLM appendix B / nanoGPT convention).

    N = ``matmul_params(cfg)``; the 12·L·D·T term is attention's QK^T and AV, forward and
    backward, at sequence length T (causal masking is not discounted). Forward-only is a third.
    """
    T = seq_len or cfg.max_len
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layers * cfg.d_model * T
