"""The decoder-only Transformer family: config and presets (config.py), init and forward
(model.py), the KV cache (cache.py), parameter axes (axes.py), FLOPs (flops.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from arlm_jax.models.api import Family, register, take_rows
from arlm_jax.models.precision import AUTO, bf16_matmul_reason, resolve_matmul_dtype
from arlm_jax.models.transformer import axes, cache, flops, model
from arlm_jax.models.transformer.config import PRESETS, TransformerConfig

Array = jax.Array


def prefill(params: dict, cfg: TransformerConfig, prompts: Array, lengths: Array, capacity: int
            ) -> tuple[cache.KVCache, Array]:
    """Fill a fresh cache of ``capacity`` slots with right-padded prompts [B, T] (``lengths`` [B]
    real tokens) -> (cache, logits float32 [B, V] of each row's next token). Only the last real
    position of each row goes through the output projection."""
    b = prompts.shape[0]
    x, kv = model.hidden(params, prompts, cfg, cache.init_cache(cfg, b, capacity))  # [B, T, D]
    logits = model.head(params, x[jnp.arange(b), lengths - 1], cfg)
    return kv.replace(lengths=lengths.astype(jnp.int32)), logits


def rollback(kv: cache.KVCache, lengths: Array) -> cache.KVCache:
    """Cut rows back to ``lengths`` [B] tokens: slots past a row's length are never attended."""
    return kv.replace(lengths=lengths.astype(jnp.int32))


def resize(cfg: TransformerConfig, width: int, depth: int) -> TransformerConfig:
    """``cfg`` at d_model ``width`` and ``depth`` blocks: heads of about the same head_dim (the
    most heads of at least that size that divide the width, and a kv-head count that divides
    them in the same ratio), d_ff by the MLP's rule, every other option kept (under muP the
    base head_dim is pinned to the current one, as the heads grow and head_dim does not)."""
    heads = max(1, width // cfg.head_dim)
    while width % heads:
        heads -= 1
    group = max(1, cfg.n_heads // cfg.kv_heads)
    kv = None if cfg.n_kv_heads is None else max(1, heads // group)
    while kv is not None and heads % kv:
        kv -= 1
    # muP: heads are added at a fixed head_dim, so the attention scale must stay 1/sqrt(head_dim)
    base_head_dim = cfg.mup_base_head_dim or (cfg.head_dim if cfg.parametrization == "mup" else 0)
    return dataclasses.replace(cfg, d_model=width, n_layers=depth, n_heads=heads, n_kv_heads=kv, d_ff=None,
                               scan_unroll=min(cfg.scan_unroll, depth), mup_base_head_dim=base_head_dim)


def describe(cfg: TransformerConfig) -> str:
    return (f"transformer: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads / "
            f"{cfg.kv_heads} kv heads, {cfg.pos} positions, context {cfg.max_len}, vocab {cfg.vocab_size}"
            + (f", muP (base width {cfg.mup_base_width})" if cfg.parametrization == "mup" else "")
            + _matmuls(cfg))


def _matmuls(cfg: TransformerConfig) -> str:
    """The matmul operand dtype, where it is not the compute dtype or was decided here."""
    mm = resolve_matmul_dtype(cfg.matmul_dtype, cfg.dtype)
    if cfg.matmul_dtype != AUTO:
        return "" if mm == cfg.dtype else f", {mm} matmul operands"
    return f", {mm} matmul operands (auto: {bf16_matmul_reason() or 'no native bfloat16 dot products'})"


FAMILY = register(Family(
    name="transformer",
    config=TransformerConfig,
    presets=PRESETS,
    default_preset="demo",
    init=model.init,
    param_axes=axes.param_axes,
    forward=model.forward,
    init_state=cache.init_cache,
    prefill=prefill,
    context_len=lambda cfg: cfg.max_len,
    state_axes=axes.state_axes,
    flops_per_token=flops.flops_per_token,
    describe=describe,
    decode_params=lambda params, cfg: model.unstack_blocks(params),
    reorder=take_rows,  # a KVCache is a pytree of batch-leading arrays
    rollback=rollback,
    unrolled=lambda cfg, n: dataclasses.replace(cfg, n_layers=n, scan_unroll=n),
    depth=lambda cfg, seq_len: cfg.n_layers,
    resize=resize,
))
