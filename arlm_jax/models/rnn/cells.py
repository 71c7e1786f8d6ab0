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

import functools
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


# Each cell's elementwise part: (extra params, carry, xw = x_t W_i + b, hw = h W_h) -> new carry.
# The matmuls stay outside it, so the backward pass can batch them over time (``recurrence``).
def elman(p: dict, carry: Carry, xw: Array, hw: Array) -> Carry:
    """Elman: carry (h [B, H],), xw and hw [B, H] -> (h',)."""
    return (jnp.tanh(xw + hw),)


def lstm_gates(z: Array) -> Array:
    """The LSTM's pre-activations z = xw + hw [B, 4H] -> its gates [B, 4, H]: sigmoid(i),
    sigmoid(f), tanh(g), sigmoid(o). One elementwise pass over all four: tanh(g) is computed as
    2 sigmoid(2g) - 1 (the same function), so XLA:CPU emits one loop instead of four slices."""
    z4 = z.reshape(*z.shape[:-1], 4, -1)
    s = jax.nn.sigmoid(jnp.where(_is_g(), 2.0 * z4, z4))
    return jnp.where(_is_g(), 2.0 * s - 1.0, s)


def _is_g() -> Array:
    """bool [4, 1]: which of the LSTM's gate rows [.., 4, H] is g, the tanh one."""
    return (jnp.arange(4) == 2)[:, None]


def _lstm_update(gates: Array, c: Array) -> Carry:
    """gates [B, 4, H], c [B, H] -> (h', c')."""
    c = gates[..., 1, :] * c + gates[..., 0, :] * gates[..., 2, :]
    return gates[..., 3, :] * jnp.tanh(c), c


def lstm(p: dict, carry: Carry, xw: Array, hw: Array) -> Carry:
    """LSTM: carry (h, c) [B, H] each, xw and hw [B, 4H] -> (h', c')."""
    return _lstm_update(lstm_gates(xw + hw), carry[1])


def gru(p: dict, carry: Carry, xw: Array, hw: Array) -> Carry:
    """GRU: carry (h [B, H],), xw and hw [B, 3H], p["b_hn"] [H] -> (h',)."""
    (h,) = carry
    x_r, x_z, x_n = jnp.split(xw, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(hw, 3, axis=-1)
    r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + p["b_hn"]))
    return ((1.0 - z) * n + z * h,)


CELLS: dict[str, Callable[[dict, Carry, Array, Array], Carry]] = {"rnn": elman, "lstm": lstm, "gru": gru}


def step(kind: str, p: dict, carry: Carry, xw: Array) -> Carry:
    """One time step of a cell: carry, xw = x_t W_i + b [B, G*H] -> the new carry."""
    return CELLS[kind](_extra(p), carry, xw, _recurrent(carry[0], p["w_h"]))


def _extra(p: dict) -> dict:
    """A layer's parameters used inside the elementwise part (the GRU's b_hn)."""
    return {k: v for k, v in p.items() if k not in ("w_i", "w_h", "b")}


def input_side(p: dict, x: Array) -> Array:
    """x [..., I] -> x W_i + b, float32 [..., G*H]: the input side of every step, one matmul
    (x [T, B, I] for a layer's whole input, or [V, I] for a table of every token's)."""
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    return (jnp.dot(flat, p["w_i"], preferred_element_type=jnp.float32) + p["b"]).reshape(*lead, -1)


def zero_carry(kind: str, batch: int, hidden: int) -> Carry:
    return tuple(jnp.zeros((batch, hidden), jnp.float32) for _ in CARRY_PARTS[kind])


def layer(kind: str, p: dict, x: Array, carry: Carry, valid: Array | None = None, unroll: int = 1
          ) -> tuple[Carry, Carry]:
    """Run one recurrent layer over time: x [T, B, I] (time-major) in the compute dtype; the
    rest as ``recur``."""
    return recur(kind, p, input_side(p, x), carry, valid, unroll)


def recur(kind: str, p: dict, xw: Array, carry: Carry, valid: Array | None = None, unroll: int = 1
          ) -> tuple[Carry, Carry]:
    """Run one recurrent layer's time loop from its input side.

    xw float32 [T, B, G*H]: x_t W_i + b for every step (``input_side``, or rows of a table of
    it); carry: the carry before the first step; valid bool [T, B] or None: where False, a
    row's carry is held instead of updated (ragged prompts: the carry stays the one after the
    row's last real token).
    -> (the final carry, the carry after every step: a tuple of [T, B, H]).
    Without ``valid`` the time loop is ``recurrence`` (its backward pass batches the weight
    gradients over time); with it, a plain scan (prefill, never differentiated).
    """
    if valid is None:
        ys = recurrence(kind, unroll, xw, p["w_h"], _extra(p), carry)
        return tuple(y[-1] for y in ys), ys

    def masked(c: Carry, inp: tuple) -> tuple[Carry, Carry]:
        xw_t, v_t = inp
        new = tuple(jnp.where(v_t[:, None], n, o) for n, o in zip(step(kind, p, c, xw_t), c))
        return new, new

    return jax.lax.scan(masked, carry, (xw, valid), unroll=unroll)


def scan_layer(kind: str, p: dict, x: Array, carry: Carry, unroll: int = 1) -> Carry:
    """The slow twin of ``layer`` without ``valid``: one plain ``lax.scan`` of ``step``, left to
    autodiff. -> the carry after every step."""
    step_ = lambda c, xw_t: (step(kind, p, c, xw_t),) * 2  # noqa: E731
    return jax.lax.scan(step_, carry, input_side(p, x), unroll=unroll)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def recurrence(kind: str, unroll: int, xw: Array, w_h: Array, extra: dict, carry: Carry) -> Carry:
    """The time loop of one layer: xw [T, B, G*H] (the input side of every step), w_h [H, G*H],
    extra (the cell's other parameters), the carry before step 0 -> the carry after every
    step, a tuple of [T, B, H].

    Its backward pass runs the elementwise part of each step backwards in a reverse scan and
    emits the cotangents of x_t W_i + b and of h W_h; the weight gradient dW_h = sum_t h_{t-1}^T
    d(hW_h)_t is then one [H, T*B] x [T*B, G*H] matmul after the loop. Autodiff of the scan
    would instead add a [H, G*H] outer product into an accumulator at every step, which on CPU
    costs more than the step's own matmul (docs/benchmarks.md, issue 14)."""
    return _recurrence_fwd(kind, unroll, xw, w_h, extra, carry)[0]


# ---- the training pair of each cell: one step forward keeping what its backward needs, and
# that step backward. Each step's cotangents come out as one [B, G*H] array where the cell reads
# only xw + hw (Elman, LSTM): d(xw) = d(hw), so a single array is stacked over time and feeds both
# weight gradients. The LSTM keeps its four gate activations, so its backward step evaluates no
# sigmoid or tanh but tanh(c'), in one elementwise expression over [B, 4, H]. The GRU's pair is
# autodiff of its cell. Each is checked against autodiff of ``scan_layer`` (tests/test_rnn.py).
# fwd(extra, carry, xw, hw) -> (carry', kept)
# bwd(extra, kept, carry, carry', d carry') -> (d extra, d carry by the direct path, d xw, d hw or None)
def _elman_fwd(extra: dict, carry: Carry, xw: Array, hw: Array) -> tuple[Carry, tuple]:
    return elman(extra, carry, xw, hw), ()


def _elman_bwd(extra: dict, kept: tuple, carry: Carry, new: Carry, d_new: Carry) -> tuple:
    (h,), (dh,) = new, d_new
    return {}, (jnp.zeros_like(dh),), dh * (1.0 - h * h), None


def _lstm_fwd(extra: dict, carry: Carry, xw: Array, hw: Array) -> tuple[Carry, Array]:
    gates = lstm_gates(xw + hw)
    return _lstm_update(gates, carry[1]), gates


def _lstm_bwd(extra: dict, gates: Array, carry: Carry, new: Carry, d_new: Carry) -> tuple:
    """gates [B, 4, H] (i, f, g, o activated), carry (h, c) before the step, new (h', c') after,
    d_new their cotangents -> d of the pre-activations [B, 4H] (and the cell state's, c)."""
    (_, c), (_, c_new), (dh, dc) = carry, new, d_new
    i, f, g, o = (gates[..., k, :] for k in range(4))
    tc = jnp.tanh(c_new)
    dc = dc + dh * o * (1.0 - tc * tc)
    upstream = jnp.stack([dc, dc, dc, dh], axis=-2)  # what multiplies each gate in c', h'
    partner = jnp.stack([g, c, i, tc], axis=-2)
    slope = jnp.where(_is_g(), 1.0 - gates * gates, gates * (1.0 - gates))  # tanh' or sigmoid'
    dz = (upstream * partner * slope).reshape(*dh.shape[:-1], -1)
    return {}, (jnp.zeros_like(dh), dc * f), dz, None


def _autodiff_pair(cell: Callable) -> tuple[Callable, Callable]:
    def fwd(extra: dict, carry: Carry, xw: Array, hw: Array) -> tuple[Carry, tuple]:
        return cell(extra, carry, xw, hw), (xw, hw)

    def bwd(extra: dict, kept: tuple, carry: Carry, new: Carry, d_new: Carry) -> tuple:
        return jax.vjp(cell, extra, carry, *kept)[1](d_new)

    return fwd, bwd


PAIRS = {"rnn": (_elman_fwd, _elman_bwd), "lstm": (_lstm_fwd, _lstm_bwd), "gru": _autodiff_pair(gru)}


def _recurrence_fwd(kind: str, unroll: int, xw: Array, w_h: Array, extra: dict, carry: Carry):
    fwd = PAIRS[kind][0]

    def body(c: Carry, xw_t: Array) -> tuple[Carry, tuple]:
        new, kept = fwd(extra, c, xw_t, _recurrent(c[0], w_h))
        return new, (new, kept)

    _, (ys, kept) = jax.lax.scan(body, carry, xw, unroll=unroll)
    return ys, (w_h, extra, carry, ys, kept)


def _recurrence_bwd(kind: str, unroll: int, res: tuple, ct: Carry):
    w_h, extra, carry, ys, kept = res
    bwd = PAIRS[kind][1]
    before = tuple(jnp.concatenate([c0[None], y[:-1]]) for c0, y in zip(carry, ys))  # carry before each step
    w_t = w_h.T

    def body(acc: tuple, inp: tuple) -> tuple[tuple, Array | tuple]:
        d_carry, d_extra = acc
        c_t, new_t, kept_t, ct_t = inp
        d_new = tuple(a + b for a, b in zip(d_carry, ct_t))
        de, dc, dxw, dhw = bwd(extra, kept_t, c_t, new_t, d_new)
        d_rec = dxw if dhw is None else dhw
        dh = dc[0] + jnp.dot(d_rec.astype(w_h.dtype), w_t, preferred_element_type=jnp.float32)
        return ((dh,) + tuple(dc[1:]), jax.tree.map(jnp.add, d_extra, de)), (dxw, dhw)  # None: stacks nothing

    zeros = (tuple(jnp.zeros_like(c) for c in carry), jax.tree.map(jnp.zeros_like, extra))
    (d_carry, d_extra), (dxw, dhw) = jax.lax.scan(body, zeros, (before, ys, kept, ct), reverse=True, unroll=unroll)
    dhw = dxw if dhw is None else dhw
    t, b, h = before[0].shape
    h_before = before[0].reshape(t * b, h).astype(w_h.dtype)
    dw_h = jnp.dot(h_before.T, dhw.reshape(t * b, -1).astype(w_h.dtype), preferred_element_type=jnp.float32)
    return dxw, dw_h.astype(w_h.dtype), d_extra, d_carry


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
