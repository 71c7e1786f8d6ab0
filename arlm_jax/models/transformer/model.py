"""The decoder-only Transformer as two pure functions: ``init`` and ``forward``.

Parameters are a plain nested dict of float32 arrays. The blocks are stacked on a leading
layer axis L and, for training, run with ``lax.scan``, so compile time does not grow with
depth. Decoding (a forward with a KV cache, or blocks split by ``unstack_blocks``) unrolls the
layers instead, so each reads its own weights and cache buffer in place; see cache.py.
Rematerialisation applies to the scanned form.

Parameter tree (shapes; optional entries depend on the config):
  embed/tok      [V, D]            token embedding (also the output matrix when tied)
  embed/pos      [max_len, D]      pos='learned'
  rel_bias       [n_buckets, H]    pos='relative' (shared by all layers, as in T5)
  blocks/attn_norm/{scale,bias}    [L, D]
  blocks/attn/{wq [L,D,H,E], wk [L,D,K,E], wv [L,D,K,E], wo [L,H,E,D]}
             /{bq [L,H,E], bk [L,K,E], bv [L,K,E], bo [L,D]}          bias=True
  blocks/mlp_norm/{scale,bias}     [L, D]
  blocks/mlp/{w_in [L,D,F], w_out [L,F,D], b_in, b_out} | {w_gate, w_up [L,D,F], w_down [L,F,D]}
  final_norm/{scale,bias}          [D]              norm_position='pre'
  lm_head/w      [D, V]            tie_embeddings=False
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from arlm_jax.models import layers
from arlm_jax.models.precision import resolve_matmul_dtype
from arlm_jax.models.transformer import cache as kvcache
from arlm_jax.models.transformer.cache import KVCache
from arlm_jax.models.transformer.config import TransformerConfig as ModelConfig
from arlm_jax.parallel.rules import constrain

Array = jax.Array

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _norm_params(cfg: ModelConfig, lead: tuple[int, ...]) -> dict:
    p = {"scale": jnp.ones(lead + (cfg.d_model,), jnp.float32)}
    if cfg.norm == "layernorm" and cfg.bias:
        p["bias"] = jnp.zeros(lead + (cfg.d_model,), jnp.float32)
    return p


def init(key: Array, cfg: ModelConfig) -> dict:
    """Random float32 parameters: N(0, init_std), residual outputs scaled by 1/sqrt(2L) (GPT-2).

    Under muP (``cfg.parametrization``) the hidden matrices' std is also divided by sqrt(m),
    m = ``cfg.width_mult``: their fan-in grows like the width, so this keeps each output
    coordinate's size width-independent (std ~ 1/sqrt(fan_in)) and equals the standard init
    at the base width (m = 1). Embeddings and the output head keep init_std."""
    L, D, H, K, E, F, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim,
                           cfg.ff_dim, cfg.vocab_size)
    std = cfg.init_std
    hid = std / cfg.width_mult ** 0.5  # == std exactly when m = 1
    out_std = hid / (2 * L) ** 0.5
    keys = iter(jax.random.split(key, 16))

    def normal(shape: tuple[int, ...], s: float = hid) -> Array:
        return s * jax.random.normal(next(keys), shape, jnp.float32)

    attn = {"wq": normal((L, D, H, E)), "wk": normal((L, D, K, E)), "wv": normal((L, D, K, E)),
            "wo": normal((L, H, E, D), out_std)}
    if cfg.mlp == "swiglu":
        mlp = {"w_gate": normal((L, D, F)), "w_up": normal((L, D, F)),
               "w_down": normal((L, F, D), out_std)}
    else:
        mlp = {"w_in": normal((L, D, F)), "w_out": normal((L, F, D), out_std)}
    if cfg.bias:
        attn |= {"bq": jnp.zeros((L, H, E)), "bk": jnp.zeros((L, K, E)), "bv": jnp.zeros((L, K, E)),
                 "bo": jnp.zeros((L, D))}
        if cfg.mlp == "gelu":
            mlp |= {"b_in": jnp.zeros((L, F)), "b_out": jnp.zeros((L, D))}
    params: dict = {
        "embed": {"tok": normal((V, D), std)},
        "blocks": {"attn_norm": _norm_params(cfg, (L,)), "attn": attn,
                   "mlp_norm": _norm_params(cfg, (L,)), "mlp": mlp},
    }
    if cfg.pos == "learned":
        params["embed"]["pos"] = normal((cfg.max_len, D), 0.01)
    if cfg.pos == "relative":
        params["rel_bias"] = jnp.zeros((cfg.rel_buckets, H), jnp.float32)
    if cfg.norm_position == "pre":
        params["final_norm"] = _norm_params(cfg, ())
    if not cfg.tie_embeddings:
        params["lm_head"] = {"w": normal((D, V), std)}
    return params


def _matmul_dtype(cfg: ModelConfig):
    """The operand dtype of the projection and MLP matmuls (``matmul_dtype``; '' -> ``dtype``;
    'auto' -> decided for the backend and CPU at trace time, ``precision.resolve_matmul_dtype``)."""
    return DTYPES[resolve_matmul_dtype(cfg.matmul_dtype, cfg.dtype)]


def _attention_block(p: dict, x: Array, positions: Array, mask: Array, bias: Array | None,
                     cfg: ModelConfig, key: Array | None, kv: tuple | None) -> tuple[Array, tuple | None]:
    """Self-attention sub-layer. x [B, T, D] -> ([B, T, D], kv).

    ``kv`` is None (attend over this call's T tokens; ``mask`` [B, T, T], ``bias`` [B, H, T, T])
    or this layer's (k_buf, v_buf, starts) from the KV cache, bufs [B, K, S, E]: the queries
    attend over the cache as it was plus the T new keys (``mask`` and ``bias`` are then pairs:
    the cache part [B, T, S], the new part [B, T, T]), and then the new keys and values are
    written at each row's offset. A cached forward (decoding) applies no attention dropout.
    """
    # Projections as plain [.., D] x [D, N*E] matmuls on reshaped (bitcast) weights: with the
    # 3-index einsum XLA:CPU picked layouts that copied wo ([H, E, D]) on every decode step.
    b, t, d = x.shape
    mm = _matmul_dtype(cfg)
    proj = lambda w: layers.dense(x, w.reshape(d, -1), None, mm).reshape(b, t, w.shape[1], w.shape[2])  # noqa: E731
    q, k, v = proj(p["wq"]), proj(p["wk"]), proj(p["wv"])
    if "bq" in p:
        q, k, v = q + p["bq"], k + p["bk"], v + p["bv"]
    if cfg.pos == "rope":
        q = layers.apply_rope(q, positions, cfg.rope_theta)
        k = layers.apply_rope(k, positions, cfg.rope_theta)
    if kv is None:
        o = layers.attention(q, k, v, mask, bias, cfg.dropout, key, scale=cfg.attn_scale)
    else:
        k_buf, v_buf, starts = kv
        o = layers.attention_with_cache(q, k_buf, v_buf, k, v, *mask, *(bias or (None, None)),
                                        scale=cfg.attn_scale)
        # Read, then write: the written keys and values take a (zero) data dependency on the
        # attention output, so XLA orders the in-place write after both reads of the old buffer.
        # Writing first made XLA:CPU fuse the write into each reader and copy every buffer on
        # every batch-1 step (docs/benchmarks.md). [B, T, K, 1]: each row and kv head waits
        # for its own query heads only, which stay on the same device under a mesh.
        after = 0.0 * o.reshape(b, t, k.shape[2], -1)[..., :1]
        k_buf, v_buf = kvcache.write(k_buf, k + after, starts), kvcache.write(v_buf, v + after, starts)
        kv = (k_buf, v_buf, starts)
    return layers.dense(o.reshape(b, t, -1), p["wo"].reshape(-1, d), p.get("bo"), mm), kv


def _block(cfg: ModelConfig, x: Array, p: dict, key: Array | None, positions: Array, mask: Array,
           bias: Array | None, kv: tuple | None = None) -> tuple[Array, tuple | None]:
    """One Transformer block, pre- or post-norm. x [B, T, D] -> ([B, T, D], kv)."""
    keys = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
    drop = (lambda y, k: y) if key is None else (lambda y, k: layers.dropout(y, cfg.dropout, k))
    norm = lambda q, y: layers.apply_norm(q, y, cfg.norm, cfg.norm_eps)  # noqa: E731
    if cfg.norm_position == "pre":
        h, kv = _attention_block(p["attn"], norm(p["attn_norm"], x), positions, mask, bias, cfg, keys[0], kv)
        x = x + drop(h, keys[1])
        x = x + drop(layers.mlp(p["mlp"], norm(p["mlp_norm"], x), cfg.mlp, _matmul_dtype(cfg)), keys[2])
    else:
        h, kv = _attention_block(p["attn"], x, positions, mask, bias, cfg, keys[0], kv)
        x = norm(p["attn_norm"], x + drop(h, keys[1]))
        x = norm(p["mlp_norm"], x + drop(layers.mlp(p["mlp"], x, cfg.mlp, _matmul_dtype(cfg)), keys[2]))
    return x, kv


# Logical axes of the residual stream [B, T, D], pinned at every block boundary when a mesh is
# set (parallel/rules.py): rows over the batch axes, the rest replicated.
_RESIDUAL = ("batch", "length", "act_embed")

_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots}


def layer_params(blocks: dict | list, i: int) -> dict:
    """Block i's weights, from the stacked [L, ...] tree or from ``unstack_blocks``' list."""
    if isinstance(blocks, (list, tuple)):
        return blocks[i]
    return jax.tree.map(lambda a: a[i], blocks)


def unstack_blocks(params: dict) -> dict:
    """``params`` with the blocks as a list of L per-layer trees.

    For decoding: slicing layer i out of the stacked weights copies it, so a decode loop splits
    them once, outside the loop, and every step then reads each layer's weights in place (a
    gpt2-124m single-token forward on CPU: 43 ms stacked, 18 ms split; docs/benchmarks.md).
    ``forward`` accepts either form.
    """
    blocks = params["blocks"]
    if isinstance(blocks, (list, tuple)):
        return params
    n = jax.tree.leaves(blocks)[0].shape[0]
    return {**params, "blocks": [layer_params(blocks, i) for i in range(n)]}


def forward(params: dict, tokens: Array, cfg: ModelConfig, cache: KVCache | None = None, *,
            positions: Array | None = None, dropout_key: Array | None = None
            ) -> tuple[Array, KVCache | None]:
    """Logits of the next token at every position.

    tokens int32 [B, T] -> (logits float32 [B, T, V], cache). Without a cache this is the plain
    full-sequence forward; ``positions`` int32 [B, T] defaults to 0..T-1 per row, and the
    returned cache is None. With a cache, row b's tokens take positions (and slots)
    ``cache.lengths[b] .. + T - 1``, attend to everything the cache holds before them, and the
    returned cache holds them too (lengths + T). Dropout is applied only when ``dropout_key``
    is given and ``cfg.dropout > 0`` (i.e. in training).
    """
    x, cache = hidden(params, tokens, cfg, cache, positions=positions, dropout_key=dropout_key)
    return head(params, x, cfg), cache


def head(params: dict, x: Array, cfg: ModelConfig) -> Array:
    """Output projection of final hidden states. x [..., D] -> float32 logits [..., V].

    Under muP the logits are divided by m = ``cfg.width_mult``: after training the output
    weights are correlated with x, so x . w grows like the width (tied or not; the tied matrix
    keeps the embedding's init and learning rate). Every caller (forward, prefill, decoding)
    projects through here, so all of them apply it."""
    dtype = DTYPES[cfg.dtype]
    if cfg.tie_embeddings:
        logits = jnp.einsum("...d,vd->...v", x, params["embed"]["tok"].astype(dtype),
                            preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("...d,dv->...v", x, params["lm_head"]["w"].astype(dtype),
                            preferred_element_type=jnp.float32)
    if cfg.width_mult != 1.0:
        logits = logits * (1.0 / cfg.width_mult)
    # Under a mesh, logits stay split over the vocabulary (tensor axis) like the weight.
    lead = ("batch",) + (None,) * (logits.ndim - 2) if logits.ndim > 1 else ()
    return constrain(logits, lead + ("vocab",))


def _embed(params: dict, tokens: Array, positions: Array, cfg: ModelConfig) -> Array:
    """Token (and absolute position) embeddings, in the compute dtype. -> [B, T, D]"""
    # Under a mesh the tables are gathered whole for the lookup (as FSDP gathers every weight
    # before use): XLA's partitioner has no efficient gather from a table split on both axes.
    whole = lambda table: constrain(table, (None, None))  # noqa: E731
    x = jnp.take(whole(params["embed"]["tok"]), tokens, axis=0)  # [B, T, D]
    if cfg.pos == "learned":
        x = x + jnp.take(whole(params["embed"]["pos"]), positions, axis=0)
    elif cfg.pos == "sinusoidal":
        x = x + layers.sinusoidal_embedding(positions, cfg.d_model)
    return constrain(x.astype(DTYPES[cfg.dtype]), _RESIDUAL)


def _masks(params: dict, positions: Array, k_pos: Array, cfg: ModelConfig, cache: KVCache | None
           ) -> tuple[Any, Any]:
    """The attention masks and positional biases of the queries at ``positions`` [B, T].

    Without a cache: (mask [B, T, T], bias [B, H, T, T] or None). With one: pairs, the cache
    part (slots filled before this call, keys at ``k_pos`` [B, S]) and the new part (causal)."""
    def biases(kp: Array) -> Array | None:  # [B, H, T, S] of the queries against keys at kp
        if cfg.pos == "alibi":
            return layers.alibi_bias(positions, kp, cfg.n_heads)
        if cfg.pos == "relative":
            return layers.relative_bias(params["rel_bias"], positions, kp, cfg.rel_max_distance)
        return None

    if cache is None:
        return layers.causal_mask(positions, k_pos), biases(k_pos)
    b, t = positions.shape
    filled = jnp.broadcast_to(k_pos[:, None, :] < cache.lengths[:, None, None], (b, t, cache.capacity))
    mask = (filled, layers.causal_mask(positions, positions))
    bias = None if cfg.pos not in ("alibi", "relative") else (biases(k_pos), biases(positions))
    return mask, bias


def _blocks(params: dict, x: Array, cfg: ModelConfig, cache: KVCache | None, block, layer_keys
            ) -> tuple[Array, KVCache | None]:
    """Run the blocks: one scanned block for training, unrolled layers for decoding."""
    blocks = params["blocks"]
    if cache is None and not isinstance(blocks, (list, tuple)):  # training: one scanned block
        def body(x: Array, inp: tuple) -> tuple[Array, None]:
            return block(x, *inp, None)[0], None

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=False)
        x, _ = jax.lax.scan(body, x, (blocks, layer_keys), unroll=cfg.scan_unroll)
        return x, None
    # decoding: layers unrolled, so each reads its own weights and cache in place
    ks, vs = [], []
    for i in range(cfg.n_layers):
        kv = None if cache is None else (cache.k[i], cache.v[i], cache.lengths)
        key = None if layer_keys is None else layer_keys[i]
        x, kv = block(x, layer_params(blocks, i), key, kv)
        if kv is not None:
            ks.append(kv[0])
            vs.append(kv[1])
    if cache is not None:
        cache = KVCache(k=tuple(ks), v=tuple(vs), lengths=cache.lengths + x.shape[1])
    return x, cache


def hidden(params: dict, tokens: Array, cfg: ModelConfig, cache: KVCache | None = None, *,
           positions: Array | None = None, dropout_key: Array | None = None
           ) -> tuple[Array, KVCache | None]:
    """``forward`` without the output projection: final hidden states [B, T, D] and the cache.

    Decoding uses it to project only the positions it samples from.
    """
    dtype = DTYPES[cfg.dtype]
    b, t = tokens.shape
    steps = jnp.arange(t, dtype=jnp.int32)
    if cache is not None:
        if positions is not None:
            raise ValueError("forward: positions come from cache.lengths when a cache is given")
        positions = cache.lengths[:, None] + steps  # slot == position
        k_pos = jnp.broadcast_to(jnp.arange(cache.capacity, dtype=jnp.int32), (b, cache.capacity))
    else:
        if positions is None:
            positions = jnp.broadcast_to(steps, (b, t))
        k_pos = positions
    if cfg.dropout <= 0.0:
        dropout_key = None
    x = _embed(params, tokens, positions, cfg)
    if dropout_key is not None:
        dropout_key, k0 = jax.random.split(dropout_key)
        x = layers.dropout(x, cfg.dropout, k0)
    mask, bias = _masks(params, positions, k_pos, cfg, cache)
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)  # noqa: E731

    def block(x: Array, p: dict, key: Array | None, kv: tuple | None) -> tuple[Array, tuple | None]:
        p = {**p, "attn": cast(p["attn"]), "mlp": cast(p["mlp"])}  # norms stay float32
        x, kv = _block(cfg, x, p, key, positions, mask, bias, kv)
        return constrain(x, _RESIDUAL), kv

    layer_keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.n_layers)
    x, cache = _blocks(params, x, cfg, cache, block, layer_keys)
    if cfg.norm_position == "pre":
        x = layers.apply_norm(params["final_norm"], x, cfg.norm, cfg.norm_eps)
    return x, cache
