"""A naive numpy twin of the model, written from the papers, one position loop at a time.

Slow on purpose: every fast path in arlm_jax is compared against this in the tests.
"""

from __future__ import annotations

import math

import numpy as np

from arlm_jax import ModelConfig


def _norm(p: dict, x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    if cfg.norm == "rmsnorm":
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.norm_eps) * p["scale"]
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + cfg.norm_eps) * p["scale"]
    return y + p["bias"] if "bias" in p else y


def _rope(x: np.ndarray, pos: int, theta: float) -> np.ndarray:  # x [N, E]
    e = x.shape[-1]
    out = np.empty_like(x)
    for i in range(e // 2):
        ang = pos / theta ** (2 * i / e)
        a, b = x[:, i], x[:, i + e // 2]
        out[:, i] = a * math.cos(ang) - b * math.sin(ang)
        out[:, i + e // 2] = b * math.cos(ang) + a * math.sin(ang)
    return out


def _alibi_slope(h: int, n: int) -> float:
    def pow2(m):
        start = 2.0 ** (-(2.0 ** -(math.log2(m) - 3)))
        return [start ** (i + 1) for i in range(m)]
    if math.log2(n).is_integer():
        return pow2(n)[h]
    c = 2 ** math.floor(math.log2(n))
    return (pow2(c) + pow2(2 * c)[0::2][: n - c])[h]


def _t5_bucket(dist: int, n_buckets: int, max_distance: int) -> int:
    exact = n_buckets // 2
    if dist < exact:
        return dist
    b = exact + int(math.log(dist / exact) / math.log(max_distance / exact) * (n_buckets - exact))
    return min(b, n_buckets - 1)


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def forward(params: dict, tokens: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """tokens [B, T] -> logits [B, T, V], float64 numpy, no dropout."""
    p = {k: v for k, v in params.items()}
    to64 = lambda t: {k: to64(v) if isinstance(v, dict) else np.asarray(v, np.float64) for k, v in t.items()}
    p = to64(p)
    B, T = tokens.shape
    H, K, E, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.d_model
    G = H // K
    out = np.zeros((B, T, cfg.vocab_size))
    for b in range(B):
        x = p["embed"]["tok"][tokens[b]]  # [T, D]
        if cfg.pos == "learned":
            x = x + p["embed"]["pos"][:T]
        if cfg.pos == "sinusoidal":
            for t in range(T):
                for i in range(D // 2):
                    ang = t * math.exp(-math.log(10000.0) * i / (D // 2))
                    x[t, i] += math.sin(ang)
                    x[t, i + D // 2] += math.cos(ang)
        for layer in range(cfg.n_layers):
            lp = {k: {n: a[layer] for n, a in v.items()} for k, v in p["blocks"].items()}
            a, m = lp["attn"], lp["mlp"]

            def attn(h):
                q = np.einsum("td,dhe->the", h, a["wq"]) + a.get("bq", 0)
                k = np.einsum("td,dke->tke", h, a["wk"]) + a.get("bk", 0)
                v = np.einsum("td,dke->tke", h, a["wv"]) + a.get("bv", 0)
                if cfg.pos == "rope":
                    q = np.stack([_rope(q[t], t, cfg.rope_theta) for t in range(T)])
                    k = np.stack([_rope(k[t], t, cfg.rope_theta) for t in range(T)])
                o = np.zeros((T, H, E))
                for hh in range(H):
                    kv = hh // G
                    for t in range(T):
                        s = np.array([q[t, hh] @ k[u, kv] / math.sqrt(E) for u in range(t + 1)])
                        if cfg.pos == "alibi":
                            s = s - _alibi_slope(hh, H) * np.array([t - u for u in range(t + 1)])
                        if cfg.pos == "relative":
                            s = s + np.array([p["rel_bias"][_t5_bucket(t - u, cfg.rel_buckets,
                                              cfg.rel_max_distance), hh] for u in range(t + 1)])
                        w = np.exp(s - s.max())
                        w /= w.sum()
                        o[t, hh] = sum(w[u] * v[u, kv] for u in range(t + 1))
                return np.einsum("the,hed->td", o, a["wo"]) + a.get("bo", 0)

            def ffn(h):
                if cfg.mlp == "swiglu":
                    g = h @ m["w_gate"]
                    return (g / (1 + np.exp(-g)) * (h @ m["w_up"])) @ m["w_down"]
                return _gelu(h @ m["w_in"] + m.get("b_in", 0)) @ m["w_out"] + m.get("b_out", 0)

            if cfg.norm_position == "pre":
                x = x + attn(_norm(lp["attn_norm"], x, cfg))
                x = x + ffn(_norm(lp["mlp_norm"], x, cfg))
            else:
                x = _norm(lp["attn_norm"], x + attn(x), cfg)
                x = _norm(lp["mlp_norm"], x + ffn(x), cfg)
        if cfg.norm_position == "pre":
            x = _norm(p["final_norm"], x, cfg)
        w_out = p["embed"]["tok"].T if cfg.tie_embeddings else p["lm_head"]["w"]
        out[b] = x @ w_out
    return out


def cross_entropy(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean NLL over masked-in tokens, one token at a time."""
    total, n = 0.0, 0.0
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(T):
            w = 1.0 if mask is None else float(mask[b, t])
            row = logits[b, t].astype(np.float64)
            lse = row.max() + math.log(np.exp(row - row.max()).sum())
            total += w * (lse - row[targets[b, t]])
            n += w
    return total / max(n, 1.0)


def greedy_uncached(params: dict, cfg: ModelConfig, prompt: list[int], n_new: int) -> list[int]:
    """Greedy decoding with no KV cache: the full forward over the whole sequence for every new
    token (left-aligned in a [1, max_len] buffer, so one compiled program serves every step)."""
    import jax
    import jax.numpy as jnp

    from arlm_jax.models.transformer.model import forward

    @jax.jit
    def next_token(params, buf, length):
        logits, _ = forward(params, buf, cfg)
        return jnp.argmax(logits[0, length - 1])

    ids = list(prompt)
    for _ in range(n_new):
        buf = np.zeros((1, cfg.max_len), np.int32)
        buf[0, :len(ids)] = ids
        ids.append(int(next_token(params, jnp.asarray(buf), len(ids))))
    return ids[len(prompt):]
