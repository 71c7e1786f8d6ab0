"""A toy family, ``bigram``: the smallest model that uses every part of the family interface.

A factored bigram model with a fading memory of the past: each token's embedding joins an
exponential moving average, and the average is projected to the next token's logits.

    h_t = decay * h_{t-1} + (1 - decay) * embed[x_t]          h [B, D], h_{-1} = 0
    logits_t = h_t @ out                                      [B, V]

``decay = 0`` is a plain (low-rank) bigram model. Its decoding state is not a KV cache: it is
the running average after every token a row has read, ``hist`` [B, S, D], with ``lengths`` [B]
(so a row continues from ``hist[b, lengths[b] - 1]``). Keeping the state after every step is
what lets ``rollback`` cut a row back to any length without recomputing, as a recurrent family
does for speculative decoding. The context is unbounded (``context_len`` is None): ``capacity``
only sizes ``hist``. docs/model-families.md walks through this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.struct
import jax
import jax.numpy as jnp

from arlm_jax.errors import ConfigError, check_choice, check_positive
from arlm_jax.models.api import Family, register, take_rows
from arlm_jax.parallel.rules import constrain

Array = jax.Array


@dataclass(frozen=True, kw_only=True)
class BigramConfig:
    """Shape of the toy ``bigram`` family (``--model.family bigram``)."""

    family: str = "bigram"
    """the model family (--model.family): bigram"""
    vocab_size: int = 257
    """token ids; `arlm train` sets it to the tokenizer's unless given"""
    d_model: int = 64
    """width of the embedding and of the moving average"""
    decay: float = 0.5
    """weight of the past in the moving average, in [0, 1); 0 = plain bigram"""
    dtype: str = "float32"
    """compute dtype (float32 or bfloat16); params and logits stay float32"""
    init_std: float = 0.02
    """std of the normal init"""

    def validate(self) -> "BigramConfig":
        for name in ("vocab_size", "d_model", "init_std"):
            check_positive(self, name, "model")
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"model.decay={self.decay} must be in [0, 1)")
        check_choice(self, "dtype", ("float32", "bfloat16"), "model")
        return self


PRESETS = {"tiny": lambda: BigramConfig(vocab_size=64, d_model=16),
           "demo": lambda: BigramConfig()}


@flax.struct.dataclass
class BigramState:
    hist: Array  # [B, S, D] the moving average after each token read (slot s: after token s)
    lengths: Array  # int32 [B] tokens read per row


def init(key: Array, cfg: BigramConfig) -> dict:
    k1, k2 = jax.random.split(key)
    normal = lambda k, shape: cfg.init_std * jax.random.normal(k, shape, jnp.float32)  # noqa: E731
    return {"embed": normal(k1, (cfg.vocab_size, cfg.d_model)), "out": normal(k2, (cfg.d_model, cfg.vocab_size))}


def param_axes(params: dict) -> dict:
    """The lookup table's rows are the vocabulary; the output matrix maps embed -> vocab."""
    return {"embed": ("vocab", "embed"), "out": ("embed", "vocab")}


def init_state(cfg: BigramConfig, batch: int, capacity: int) -> BigramState:
    dtype = jnp.dtype(cfg.dtype)
    return BigramState(hist=jnp.zeros((batch, capacity, cfg.d_model), dtype),
                       lengths=jnp.zeros((batch,), jnp.int32))


def forward(params: dict, tokens: Array, cfg: BigramConfig, state: BigramState | None = None, *,
            positions: Array | None = None, dropout_key: Array | None = None
            ) -> tuple[Array, BigramState | None]:
    """tokens int32 [B, T] -> (logits float32 [B, T, V], state). ``positions`` and
    ``dropout_key`` are accepted for the interface and unused: the model has neither."""
    del positions, dropout_key
    b, t = tokens.shape
    dtype = jnp.dtype(cfg.dtype)
    x = jnp.take(constrain(params["embed"], (None, None)), tokens, axis=0).astype(dtype)  # [B, T, D]
    if state is None:
        h0 = jnp.zeros((b, cfg.d_model), dtype)
    else:  # row b continues from the average after its last token (zeros when it has none)
        last = state.hist[jnp.arange(b), jnp.maximum(state.lengths - 1, 0)]
        h0 = jnp.where((state.lengths > 0)[:, None], last, 0.0).astype(dtype)

    def step(h: Array, x_t: Array) -> tuple[Array, Array]:
        h = cfg.decay * h + (1.0 - cfg.decay) * x_t
        return h, h

    _, hs = jax.lax.scan(step, h0, x.swapaxes(0, 1))  # [T, B, D]
    hs = hs.swapaxes(0, 1)  # [B, T, D]
    logits = jnp.einsum("btd,dv->btv", hs, params["out"].astype(dtype), preferred_element_type=jnp.float32)
    if state is None:
        return logits, None
    slots = state.lengths[:, None] + jnp.arange(t)[None, :]  # [B, T]
    hist = state.hist.at[jnp.arange(b)[:, None], slots].set(hs, mode="drop")
    return logits, BigramState(hist=hist, lengths=state.lengths + t)


def rollback(state: BigramState, lengths: Array) -> BigramState:
    """Rows cut back to ``lengths`` [B] tokens: the averages after those tokens are kept."""
    return state.replace(lengths=lengths.astype(jnp.int32))


def prefill(params: dict, cfg: BigramConfig, prompts: Array, lengths: Array, capacity: int
            ) -> tuple[BigramState, Array]:
    """Read right-padded prompts [B, T]; each row's state and logits are taken after its own
    last real token, so the padding behind it is never read again."""
    b = prompts.shape[0]
    logits, state = forward(params, prompts, cfg, init_state(cfg, b, capacity))
    return rollback(state, lengths), logits[jnp.arange(b), lengths - 1]


def state_axes(state: BigramState) -> BigramState:
    return BigramState(hist=("batch", "length", "act_embed"), lengths=("batch",))


FAMILY = register(Family(
    name="bigram",
    config=BigramConfig,
    presets=PRESETS,
    default_preset="demo",
    init=init,
    param_axes=param_axes,
    forward=forward,
    init_state=init_state,
    prefill=prefill,
    context_len=lambda cfg: None,
    state_axes=state_axes,
    flops_per_token=lambda cfg, seq_len=None: 6.0 * cfg.d_model * cfg.vocab_size,
    describe=lambda cfg: (f"bigram: d_model {cfg.d_model}, decay {cfg.decay}, vocab {cfg.vocab_size}, "
                          f"unbounded context"),
    reorder=take_rows,
    rollback=rollback,
))
