"""Recurrent cells (Elman, LSTM, GRU) as pure functions, and a layer that scans one over time.

Axis legend: T time, B batch, I input width, H hidden width, G gates per unit (1 Elman, 4 LSTM,
3 GRU). A cell's parameters are one layer's dict:

    w_i [I, G*H]  input kernel       b [G*H]  bias of the input side
    w_h [H, G*H]  recurrent kernel   b_hn [H] GRU only: the bias inside r * (W_hn h + b_hn)

Gates are laid out as flax.nnx's OptimizedLSTMCell and GRUCell (and PyTorch) lay them out:
i, f, g, o for the LSTM, r, z, n for the GRU. The input side of every step, x_t W_i + b, does
not depend on the recurrence, so ``layer`` computes it for all T steps as one matmul before
the scan; inside the scan each step is one [B, H] x [H, G*H] matmul and the gate arithmetic.

A carry is a tuple of float32 [B, H] arrays: (h,) for Elman and GRU, (h, c) for the LSTM.

    h' = tanh(x W_i + b + h W_h)                                        Elman ("rnn")
    i, f, g, o = split(x W_i + b + h W_h)                               LSTM
    c' = sigmoid(f) c + sigmoid(i) tanh(g);  h' = sigmoid(o) tanh(c')
    (x_r, x_z, x_n), (h_r, h_z, h_n) = split(x W_i + b), split(h W_h)   GRU
    r = sigmoid(x_r + h_r);  z = sigmoid(x_z + h_z)
    n = tanh(x_n + r (h_n + b_hn));  h' = (1 - z) n + z h
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Carry = tuple[Array, ...]

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # gates per hidden unit
CARRY_PARTS = {"rnn": ("h",), "lstm": ("h", "c"), "gru": ("h",)}  # the carry's arrays, in order


def _recurrent(h: Array, w_h: Array) -> Array:
    """h [B, H] @ w_h [H, G*H] in w_h's dtype, accumulated in float32 -> [B, G*H]."""
    return jnp.dot(h.astype(w_h.dtype), w_h, preferred_element_type=jnp.float32)


def elman(p: dict, carry: Carry, xw: Array) -> Carry:
    """One Elman step: carry (h [B, H],), xw = x_t W_i + b [B, H] -> (h',)."""
    (h,) = carry
    return (jnp.tanh(xw + _recurrent(h, p["w_h"])),)


def lstm(p: dict, carry: Carry, xw: Array) -> Carry:
    """One LSTM step: carry (h, c) [B, H] each, xw [B, 4H] -> (h', c')."""
    h, c = carry
    i, f, g, o = jnp.split(xw + _recurrent(h, p["w_h"]), 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def gru(p: dict, carry: Carry, xw: Array) -> Carry:
    """One GRU step: carry (h [B, H],), xw [B, 3H] -> (h',)."""
    (h,) = carry
    x_r, x_z, x_n = jnp.split(xw, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(_recurrent(h, p["w_h"]), 3, axis=-1)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + p["b_hn"]))
    return ((1.0 - z) * n + z * h,)


CELLS: dict[str, Callable[[dict, Carry, Array], Carry]] = {"rnn": elman, "lstm": lstm, "gru": gru}


def zero_carry(kind: str, batch: int, hidden: int) -> Carry:
    return tuple(jnp.zeros((batch, hidden), jnp.float32) for _ in CARRY_PARTS[kind])


def layer(kind: str, p: dict, x: Array, carry: Carry, valid: Array | None = None, unroll: int = 1
          ) -> tuple[Carry, Carry]:
    """Run one recurrent layer over time.

    x [T, B, I] (time-major) in the compute dtype; carry: the carry before the first step;
    valid bool [T, B] or None: where False, a row's carry is held instead of updated (ragged
    prompts: the carry stays the one after the row's last real token).
    -> (the final carry, the carry after every step: a tuple of [T, B, H]).
    """
    t, b, _ = x.shape
    xw = (jnp.dot(x.reshape(t * b, -1), p["w_i"], preferred_element_type=jnp.float32)
          + p["b"]).reshape(t, b, -1)  # [T, B, G*H]: the input side of all steps at once
    cell = CELLS[kind]

    def step(c: Carry, inp: tuple) -> tuple[Carry, Carry]:
        xw_t, v_t = inp
        new = cell(p, c, xw_t)
        if v_t is not None:
            new = tuple(jnp.where(v_t[:, None], n, o) for n, o in zip(new, c))
        return new, new

    return jax.lax.scan(step, carry, (xw, valid), unroll=unroll)
