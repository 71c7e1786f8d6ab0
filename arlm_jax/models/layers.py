"""Pure layer functions: norms, positional encodings, attention core, MLP, dropout.

Every function takes arrays (and small dicts of arrays) and returns arrays; none owns
parameters or state, so each can be imported alone into someone else's JAX code.
Axis legend (see ``ModelConfig``): B batch, T query positions, S key positions, D model,
H query heads, K kv heads, G = H // K, E head dim, F hidden MLP dim, V vocab.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array


# ---- norms ----------------------------------------------------------------------------
def layer_norm(x: Array, scale: Array, bias: Array | None, eps: float) -> Array:
    """LayerNorm over the last axis, computed in float32, returned in x's dtype."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    """RMSNorm (no centring, no bias), computed in float32, returned in x's dtype."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps) * scale
    return y.astype(x.dtype)


def apply_norm(p: dict, x: Array, kind: str, eps: float) -> Array:
    """Dispatch on the norm kind; ``p`` holds ``scale`` [D] and optionally ``bias`` [D]."""
    if kind == "rmsnorm":
        return rms_norm(x, p["scale"], eps)
    return layer_norm(x, p["scale"], p.get("bias"), eps)


# ---- positional encodings ---------------------------------------------------------------
def sinusoidal_embedding(positions: Array, d_model: int) -> Array:
    """Fixed sin/cos embedding of Vaswani et al. positions [B, T] -> [B, T, D] float32."""
    half = d_model // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, D/2]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding (rotate-half / GPT-NeoX layout). x [B, T, N, E], positions [B, T]."""
    e = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))  # [E/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, E/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def alibi_slopes(n_heads: int) -> Array:
    """Per-head ALiBi slopes (Press et al.), including the non-power-of-two rule. -> [H]."""
    def pow2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = pow2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]
    return jnp.asarray(slopes, dtype=jnp.float32)


def alibi_bias(q_pos: Array, k_pos: Array, n_heads: int) -> Array:
    """Linear distance penalty -slope_h * (q - k). q_pos [B, T], k_pos [B, S] -> [B, H, T, S]."""
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)  # [B, T, S]
    return -alibi_slopes(n_heads)[None, :, None, None] * dist[:, None]


def relative_buckets(q_pos: Array, k_pos: Array, n_buckets: int, max_distance: int) -> Array:
    """T5's causal (unidirectional) log-spaced buckets of q - k. -> int32 [B, T, S]."""
    n = jnp.maximum(q_pos[:, :, None] - k_pos[:, None, :], 0)  # distance into the past
    max_exact = n_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
        / math.log(max_distance / max_exact) * (n_buckets - max_exact)
    ).astype(jnp.int32)
    large = jnp.minimum(large, n_buckets - 1)
    return jnp.where(is_small, n, large).astype(jnp.int32)


def relative_bias(table: Array, q_pos: Array, k_pos: Array, max_distance: int) -> Array:
    """Learned T5 bias: table [n_buckets, H] gathered by bucket -> [B, H, T, S] float32."""
    buckets = relative_buckets(q_pos, k_pos, table.shape[0], max_distance)
    return jnp.moveaxis(table.astype(jnp.float32)[buckets], -1, 1)


# ---- attention ---------------------------------------------------------------------------
def causal_mask(q_pos: Array, k_pos: Array, k_valid: Array | None = None) -> Array:
    """True where query t may attend to key s: k_pos <= q_pos (and the key is valid).

    q_pos [B, T], k_pos [B, S], k_valid [B, S] bool -> [B, T, S] bool. Positions rather
    than indices, so the same rule serves training, ragged prompts and a KV cache.
    """
    mask = k_pos[:, None, :] <= q_pos[:, :, None]
    if k_valid is not None:
        mask = mask & k_valid[:, None, :]
    return mask


def attention(q: Array, k: Array, v: Array, mask: Array, bias: Array | None = None,
              dropout_rate: float = 0.0, dropout_key: Array | None = None, *,
              scale: float | None = None) -> Array:
    """Scaled dot-product attention with grouped kv heads (MHA, GQA and MQA alike).

    q [B, T, H, E], k and v [B, S, K, E] with H % K == 0, mask [B, T, S] bool,
    bias [B, H, T, S] float32 or None -> [B, T, H, E] in q's dtype. Scores and softmax
    are float32; masked entries use finfo.min, not -inf, so fully masked rows stay finite.
    ``scale`` multiplies the scores q.k (None: 1/sqrt(E); muP uses one proportional to 1/E).
    """
    return attention_core(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, bias,
                          dropout_rate, dropout_key, scale=scale)


def attention_core(q: Array, kt: Array, vt: Array, mask: Array, bias: Array | None = None,
                   dropout_rate: float = 0.0, dropout_key: Array | None = None, *,
                   scale: float | None = None) -> Array:
    """``attention`` with keys and values head-major: kt, vt [B, K, S, E] (the KV-cache layout).

    Layout, chosen by measurement on XLA:CPU (docs/benchmarks.md): the G = H // K query
    heads that share a kv head are folded into the query axis, so both matmuls are plain
    4-D batched matmuls [B, K, G*T, E] x [B, K, S, E] (a 5-D [B, K, G, T, E] form is ~2x
    slower there). The softmax is normalised after the PV product (divide [.., E] rather
    than [.., S]), as flash attention does; dropout then drops unnormalised weights.
    """
    qf = _fold_queries(q, kt.shape[1])
    scores = _scores(qf, kt, mask, bias, scale)  # [B, K, G*T, S]
    w = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
    denom = w.sum(-1, keepdims=True)  # [B, K, G*T, 1]
    if dropout_key is not None and dropout_rate > 0.0:
        w = dropout(w, dropout_rate, dropout_key)
    return _unfold_queries(_pv(w, vt, q.dtype) / denom, q)


def attention_with_cache(q: Array, kt: Array, vt: Array, k_new: Array, v_new: Array,
                         mask_old: Array, mask_new: Array, bias_old: Array | None = None,
                         bias_new: Array | None = None, *, scale: float | None = None) -> Array:
    """T new queries over a KV cache *as it was before them* plus their own T keys: one softmax
    over both parts, so the result is ``attention_core`` over the cache with the new keys
    written in. Decoding reads the cache before writing to it, which lets XLA update it in
    place (see model.py).

    q [B, T, H, E]; kt, vt [B, K, S, E] the cache; k_new, v_new [B, T, K, E]; mask_old
    [B, T, S] (or broadcastable: the slots filled before these tokens); mask_new [B, T, T]
    (causal); biases [B, H, T, S] and [B, H, T, T] or None -> [B, T, H, E]. ``scale`` as in
    ``attention``.
    """
    kh = kt.shape[1]
    qf = _fold_queries(q, kh)
    kn, vn = k_new.transpose(0, 2, 1, 3), v_new.transpose(0, 2, 1, 3)  # [B, K, T, E]
    s_old = _scores(qf, kt, mask_old, bias_old, scale)  # [B, K, G*T, S]
    s_new = _scores(qf, kn, mask_new, bias_new, scale)  # [B, K, G*T, T]
    top = jnp.maximum(s_old.max(-1, keepdims=True), s_new.max(-1, keepdims=True))
    w_old, w_new = jnp.exp(s_old - top), jnp.exp(s_new - top)
    denom = w_old.sum(-1, keepdims=True) + w_new.sum(-1, keepdims=True)
    return _unfold_queries((_pv(w_old, vt, q.dtype) + _pv(w_new, vn, q.dtype)) / denom, q)


def _fold_queries(q: Array, kh: int) -> Array:
    """q [B, T, H, E] -> [B, K, G*T, E]: each kv head's G query heads folded into the query axis."""
    b, t, h, e = q.shape
    return q.reshape(b, t, kh, h // kh, e).transpose(0, 2, 3, 1, 4).reshape(b, kh, h // kh * t, e)


def _unfold_queries(out: Array, q: Array) -> Array:
    """float32 [B, K, G*T, E] -> q's shape [B, T, H, E] and dtype."""
    b, t, h, e = q.shape
    kh = out.shape[1]
    return out.astype(q.dtype).reshape(b, kh, h // kh, t, e).transpose(0, 3, 1, 2, 4).reshape(b, t, h, e)


def _scores(qf: Array, kt: Array, mask: Array, bias: Array | None, scale: float | None = None) -> Array:
    """Scaled, biased, masked float32 scores [B, K, G*T, S] of folded queries qf [B, K, G*T, E]
    against keys kt [B, K, S, E]; mask [B or 1, T, S] bool, bias [B, H, T, S] or None; scale
    None -> 1/sqrt(E). Masked entries get finfo.min, not -inf, so a fully masked row stays finite."""
    b, kh, gt, e = qf.shape
    t, s = mask.shape[1], kt.shape[2]
    scores = jnp.einsum("bkqe,bkse->bkqs", qf, kt.astype(qf.dtype), preferred_element_type=jnp.float32)
    scores = scores * (1.0 / math.sqrt(e) if scale is None else scale)
    if bias is not None:
        scores = scores + bias.reshape(b, kh, gt, s)
    m = jnp.broadcast_to(mask[:, None], (mask.shape[0], gt // t, t, s)).reshape(mask.shape[0], 1, gt, s)
    return jnp.where(m, scores, jnp.finfo(jnp.float32).min)


def _pv(w: Array, vt: Array, dtype) -> Array:
    """Unnormalised weights w [B, K, G*T, S] times values vt [B, K, S, E] -> float32 [B, K, G*T, E]."""
    return jnp.einsum("bkqs,bkse->bkqe", w.astype(dtype), vt.astype(dtype), preferred_element_type=jnp.float32)


# ---- MLP and dropout ---------------------------------------------------------------------
def dense(x: Array, w: Array, b: Array | None = None, operand_dtype=None) -> Array:
    """x [..., N] @ w [N, M] (+ b [M]) -> [..., M], computed as one 2-D matmul [prod(...), N] x
    [N, M]. On XLA:CPU a 3-D activation times a 2-D weight made the backward pass transpose
    its [B, T, M] cotangent in a slow loop fusion; the flat form keeps plain GEMMs in both
    directions (docs/benchmarks.md, issue 13).

    ``operand_dtype`` (e.g. bfloat16): the operands are rounded to it and the products
    accumulated and returned in float32, in the backward pass too (``mixed_matmul``)."""
    x2 = x.reshape(-1, x.shape[-1])
    if operand_dtype is None or operand_dtype == x.dtype == w.dtype:
        y = x2 @ w
    else:
        y = mixed_matmul(x2, w, jnp.dtype(operand_dtype)).astype(x.dtype)
    y = y.reshape(*x.shape[:-1], w.shape[-1])
    return y if b is None else y + b


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def mixed_matmul(x: Array, w: Array, operand_dtype) -> Array:
    """x [N, K] @ w [K, M] with both operands rounded to ``operand_dtype`` -> float32 [N, M].

    Its backward computes dx = g w^T and dw = x^T g the same way (g rounded once). Left to
    autodiff, the backward matmuls would return ``operand_dtype``, and on XLA:CPU a bfloat16
    matmul with a bfloat16 result runs ~6x slower than one accumulating into float32
    (docs/benchmarks.md, issue 13)."""
    return jnp.dot(x.astype(operand_dtype), w.astype(operand_dtype), preferred_element_type=jnp.float32)


def _mixed_matmul_fwd(x: Array, w: Array, operand_dtype) -> tuple[Array, tuple]:
    xl, wl = x.astype(operand_dtype), w.astype(operand_dtype)
    # x^T kept physically transposed for dw's matmul (flattened behind a barrier, so XLA
    # cannot fold the transpose back into the matmul as a contraction over dimension 0)
    xt = jax.lax.optimization_barrier(xl.T.reshape(-1)).reshape(xl.shape[1], xl.shape[0])
    # zero-size arrays carry the primal dtypes (a residual must be an array)
    dtypes = (jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))
    return jnp.dot(xl, wl, preferred_element_type=jnp.float32), (xt, wl, dtypes)


def _mixed_matmul_bwd(operand_dtype, res: tuple, g: Array) -> tuple[Array, Array]:
    xt, wl, (x_like, w_like) = res
    gl = g.astype(operand_dtype)
    dx = jnp.dot(gl, wl.T, preferred_element_type=jnp.float32)  # [N, M] x [K, M]^T: fast as is
    dw = jnp.dot(xt, gl, preferred_element_type=jnp.float32)  # [K, N] x [N, M]
    return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


_GELU_C = math.sqrt(2.0 / math.pi)


@jax.custom_vjp
def gelu_tanh(x: Array) -> Array:
    """GPT-2's tanh-approximated GELU, the same values as ``jax.nn.gelu(x, approximate=True)``.

    Its own backward saves only ``x`` and recomputes the tanh: autodiff of the formula keeps
    five [.., F] intermediates per layer alive for the backward pass, which on XLA:CPU cost
    more than the matmuls around it."""
    return 0.5 * x * (1.0 + jnp.tanh(_GELU_C * (x + 0.044715 * x * x * x)))


def _gelu_tanh_fwd(x: Array) -> tuple[Array, Array]:
    return gelu_tanh(x), x


def _gelu_tanh_bwd(x: Array, g: Array) -> tuple[Array]:
    th = jnp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
    dth = (1.0 - th * th) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return (g * (0.5 * (1.0 + th) + 0.5 * x * dth),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


def mlp(p: dict, x: Array, kind: str, operand_dtype=None) -> Array:
    """Position-wise feed-forward. x [B, T, D] -> [B, T, D].

    gelu:   w_in [D, F], w_out [F, D] (+ b_in [F], b_out [D] when present), tanh-GELU as GPT-2.
    swiglu: w_gate, w_up [D, F], w_down [F, D] (LLaMA).
    ``operand_dtype``: of the matmuls, as in ``dense``.
    """
    mm = functools.partial(dense, operand_dtype=operand_dtype)
    if kind == "swiglu":
        h = jax.nn.silu(mm(x, p["w_gate"])) * mm(x, p["w_up"])
        return mm(h, p["w_down"])
    h = gelu_tanh(mm(x, p["w_in"], p.get("b_in")))
    return mm(h, p["w_out"], p.get("b_out"))


def dropout(x: Array, rate: float, key: Array, mask_shape: tuple[int, ...] | None = None) -> Array:
    """Inverted dropout: zero with probability ``rate``, scale survivors by 1/(1-rate).
    ``mask_shape`` (default x.shape): a shape that broadcasts to x's, e.g. [1, B, D] for one
    mask shared by every time step of [T, B, D] (variational / locked dropout)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape if mask_shape is None else mask_shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)
