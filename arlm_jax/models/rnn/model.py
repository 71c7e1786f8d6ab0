"""The recurrent LM: init, parameter axes, forward with an explicit decoding state, prefill.

Parameters (a pytree of float32 arrays; axes in the legend of config.py, G gates per unit):

    embed       [V, E]             token embedding (also the output matrix when tied)
    layers[l]   w_i [I_l, G*H_l], w_h [H_l, G*H_l], b [G*H_l] (+ b_hn [H_l] for the GRU);
                I_0 = E, I_l = H_{l-1}
    lm_head.w   [H_last, V]        untied output matrix only

The decoding state (``RecurrentState``) is not a cache of the past: it keeps, per row, the carry
after each of the last ``history`` tokens read, in a ring (slot n % W after token n). The newest
is what the next token continues from; the older ones are what lets ``rollback`` cut a row
back by up to ``history - 1`` tokens without recomputing, which speculative decoding does after
every verify pass. Cost and memory per token do not grow with the context.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from arlm_jax.models import layers as shared
from arlm_jax.models.rnn import cells
from arlm_jax.models.rnn.config import RecurrentConfig
from arlm_jax.parallel.rules import constrain

Array = jax.Array


@flax.struct.dataclass
class RecurrentState:
    ring: tuple  # per layer, per carry part (h; h, c for the LSTM): float32 [B, W, H_l]
    lengths: Array  # int32 [B] tokens read per row; its newest carry is in slot (lengths - 1) % W


def init(key: Array, cfg: RecurrentConfig) -> dict:
    """Cell weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's init), the LSTM's forget
    gate bias +1, the embedding (and an untied head) ~ N(0, init_std)."""
    g, sizes = cells.GATES[cfg.family], cfg.hidden_sizes()
    keys = jax.random.split(key, 2 + 4 * cfg.n_layers)
    params = {"embed": cfg.init_std * jax.random.normal(keys[0], (cfg.vocab_size, cfg.d_embed), jnp.float32)}
    blocks, width = [], cfg.d_embed
    for i, h in enumerate(sizes):
        k = keys[2 + 4 * i: 6 + 4 * i]
        uniform = lambda kk, shape: jax.random.uniform(kk, shape, jnp.float32, -1.0, 1.0) / math.sqrt(h)  # noqa: B023
        p = {"w_i": uniform(k[0], (width, g * h)), "w_h": uniform(k[1], (h, g * h)), "b": uniform(k[2], (g * h,))}
        if cfg.family == "lstm":
            p["b"] = p["b"].at[h:2 * h].add(1.0)  # forget gate open at the start
        if cfg.family == "gru":
            p["b_hn"] = uniform(k[3], (h,))
        blocks.append(p)
        width = h
    params["layers"] = blocks
    if not cfg.tie_embeddings:
        params["lm_head"] = {"w": cfg.init_std * jax.random.normal(keys[1], (width, cfg.vocab_size), jnp.float32)}
    return params


_LAYER_AXES = {"w_h": ("hidden", "gates"), "b": ("gates",), "b_hn": ("norm",)}


def param_axes(params: dict) -> dict:
    """Logical names: the first layer's input kernel maps embed -> gates, the others hidden ->
    gates; the embedding's rows are the vocabulary."""
    axes = {"embed": ("vocab", "embed"), "layers": [
        {name: (("embed" if i == 0 else "hidden"), "gates") if name == "w_i" else _LAYER_AXES[name]
         for name in p} for i, p in enumerate(params["layers"])]}
    if "lm_head" in params:
        axes["lm_head"] = {"w": ("hidden", "vocab")}
    return axes


def state_axes(state: RecurrentState) -> RecurrentState:
    return RecurrentState(ring=jax.tree.map(lambda a: ("batch", "length", "act_hidden"), state.ring),
                          lengths=("batch",))


def init_state(cfg: RecurrentConfig, batch: int, capacity: int | None = None) -> RecurrentState:
    """An empty state for ``batch`` rows; ``capacity`` is accepted for the interface (the context
    is unbounded: the state's size is set by ``cfg.history``)."""
    del capacity
    parts = len(cells.CARRY_PARTS[cfg.family])
    ring = tuple(tuple(jnp.zeros((batch, cfg.history, h), jnp.float32) for _ in range(parts))
                 for h in cfg.hidden_sizes())
    return RecurrentState(ring=ring, lengths=jnp.zeros((batch,), jnp.int32))


def _zeros(cfg: RecurrentConfig, batch: int) -> list[cells.Carry]:
    """Each layer's carry before any token."""
    return [cells.zero_carry(cfg.family, batch, h) for h in cfg.hidden_sizes()]


def _newest(state: RecurrentState) -> list[cells.Carry]:
    """Each layer's carry after each row's last token (zeros for a row that read none)."""
    b, w = state.lengths.shape[0], state.ring[0][0].shape[1]
    slot, seen = (state.lengths - 1) % w, (state.lengths > 0)[:, None]
    return [tuple(jnp.where(seen, part[jnp.arange(b), slot], 0.0) for part in layer) for layer in state.ring]


def _record(state: RecurrentState, per_layer: list[cells.Carry]) -> RecurrentState:
    """The state after reading T more tokens per row: ``per_layer`` holds each layer's carries
    after each of them ([T, B, H] per part); the last min(T, W) go into the ring."""
    t = per_layer[0][0].shape[0]
    b, w = state.lengths.shape[0], state.ring[0][0].shape[1]
    m = min(t, w)
    slots = (state.lengths[:, None] + jnp.arange(t - m, t)[None, :]) % w  # [B, m], distinct per row
    rows = jnp.arange(b)[:, None]
    ring = tuple(tuple(part.at[rows, slots].set(new[t - m:].swapaxes(0, 1)) for part, new in zip(layer, carries))
                 for layer, carries in zip(state.ring, per_layer))
    return RecurrentState(ring=ring, lengths=state.lengths + t)


def rollback(state: RecurrentState, lengths: Array) -> RecurrentState:
    """Rows cut back to ``lengths`` [B] tokens, at most ``history - 1`` fewer than they hold:
    the carries after those tokens are still in the ring."""
    return state.replace(lengths=lengths.astype(jnp.int32))


def _drop(x: Array, rate: float, key: Array | None, locked: bool) -> Array:
    """Dropout on time-major x [T, B, D]; ``locked``: one mask per row for all time steps."""
    if key is None or rate == 0.0:
        return x
    return shared.dropout(x, rate, key, (1,) + x.shape[1:] if locked else None)


def _input_by_table(cfg: RecurrentConfig, tokens: Array, embed_key: Array | None) -> bool:
    """Whether the first layer's input side, embed[token] W_i + b, is cheaper as rows of a table
    computed for every token id: when the vocabulary has fewer ids than the batch has tokens (a
    byte vocabulary: 257 rows of matmul instead of B*T) and no dropout falls on the embeddings.
    The same values either way; the backward pass then sums the cotangents per id (a
    scatter-add) before two small matmuls."""
    return cfg.vocab_size < tokens.size and (embed_key is None or cfg.dropout == 0.0)


def _layers(params: dict, tokens: Array, cfg: RecurrentConfig, carries: list[cells.Carry],
            valid: Array | None, dropout_key: Array | None) -> tuple[Array, list[cells.Carry]]:
    """tokens int32 [B, T] -> (the last layer's output, time-major [T, B, H_last], and each
    layer's carries after every step, [T, B, H] per part)."""
    dtype = jnp.dtype(cfg.dtype)
    n = cfg.n_layers
    keys = [None] * (2 * n + 1) if dropout_key is None else list(jax.random.split(dropout_key, 2 * n + 1))
    embed = constrain(params["embed"], (None, None))
    by_table = _input_by_table(cfg, tokens, keys[0])
    if not by_table:
        x = jnp.take(embed, tokens.T, axis=0).astype(dtype)  # [T, B, E]
        x = constrain(x, (None, "batch", "act_embed"))
        x = _drop(x, cfg.dropout, keys[0], cfg.locked_dropout)
    out = []
    for i, p in enumerate(params["layers"]):
        w_h = p["w_h"]
        if keys[n + 1 + i] is not None and cfg.weight_drop > 0.0:
            w_h = shared.dropout(w_h, cfg.weight_drop, keys[n + 1 + i])
        p = {**p, "w_i": p["w_i"].astype(dtype), "w_h": w_h.astype(dtype)}
        if i == 0 and by_table:  # the input side of every token id once [V, G*H], then its rows
            xw = jnp.take(cells.input_side(p, embed.astype(dtype)), tokens.T, axis=0)  # [T, B, G*H]
        else:
            xw = cells.input_side(p, x)
        _, ys = cells.recur(cfg.family, p, xw, carries[i], valid, cfg.unroll)
        out.append(ys)
        x = _drop(ys[0].astype(dtype), cfg.dropout, keys[1 + i], cfg.locked_dropout)
    return x, out


def head(params: dict, x: Array, cfg: RecurrentConfig) -> Array:
    """The last layer's output [..., H_last] -> logits float32 [..., V]."""
    w = params["embed"].T if cfg.tie_embeddings else params["lm_head"]["w"]
    return shared.dense(x, w.astype(x.dtype)).astype(jnp.float32)


def forward(params: dict, tokens: Array, cfg: RecurrentConfig, state: RecurrentState | None = None, *,
            positions: Array | None = None, dropout_key: Array | None = None
            ) -> tuple[Array, RecurrentState | None]:
    """tokens int32 [B, T] -> (logits float32 [B, T, V], state). Without a state every row
    starts from zero carries and None is returned; with one, row b continues from its newest
    carry and the state returned holds the T new tokens. ``positions`` is accepted for the
    interface and unused (a recurrent model has no positions). Dropout only with a
    ``dropout_key`` (training)."""
    del positions
    b = tokens.shape[0]
    start = _zeros(cfg, b) if state is None else _newest(state)
    x, per_layer = _layers(params, tokens, cfg, start, None, dropout_key)
    logits = head(params, x, cfg).swapaxes(0, 1)  # [B, T, V]
    return logits, (None if state is None else _record(state, per_layer))


def prefill(params: dict, cfg: RecurrentConfig, prompts: Array, lengths: Array, capacity: int
            ) -> tuple[RecurrentState, Array]:
    """Read right-padded prompts [B, T] (``lengths`` [B] real tokens): each row's carries stop
    at its last real token, so the padding is never read. -> (state, logits float32 [B, V] of
    each row's next token)."""
    b, t = prompts.shape
    state = init_state(cfg, b, capacity)
    valid = jnp.arange(t)[:, None] < lengths[None, :]  # [T, B]
    x, per_layer = _layers(params, prompts, cfg, _zeros(cfg, b), valid, None)
    # After its last real token a row's carries are held, so every slot written past it holds
    # them too, and the ring's newest slot (lengths - 1) is right for every row.
    state = _record(state, per_layer).replace(lengths=lengths.astype(jnp.int32))
    return state, head(params, x[-1], cfg)


def flops_per_token(cfg: RecurrentConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 x the matmul weights a token goes through (forward 2,
    backward 4); the embedding lookup is free. Independent of the context length."""
    g, width, n = cells.GATES[cfg.family], cfg.d_embed, 0
    for h in cfg.hidden_sizes():
        n += g * h * (width + h)
        width = h
    return 6.0 * (n + width * cfg.vocab_size)


def describe(cfg: RecurrentConfig) -> str:
    sizes = cfg.hidden_sizes()
    return (f"{cfg.family}: {cfg.n_layers} layers of {'/'.join(map(str, sizes))} units, embedding {cfg.d_embed} "
            f"({'tied' if cfg.tie_embeddings else 'untied'}), unbounded context, {cfg.history}-state rollback, "
            f"vocab {cfg.vocab_size}")
