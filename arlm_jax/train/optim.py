"""The optimizer: AdamW with warmup and a cosine, constant or warmup-stable-decay schedule,
global-norm clipping, and a weight-decay mask derived from the parameters' logical axes.

With ``train.optimizer="muon"`` the hidden matrices (``muon_dims``) take ``optax.contrib.muon``
instead and everything else keeps AdamW; docs/optimizers.md describes the routing.

A muP model (a config with ``width_mult`` != 1) gets per-parameter learning-rate multipliers
(``models.api.lr_scales``) on its AdamW leaves, applied after the optimizer (``lr_multipliers``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from optax.contrib import MuonDimensionNumbers, muon

from arlm_jax.config import TrainConfig
from arlm_jax.models import family_of
from arlm_jax.models.api import FEATURE_AXES, decays, hidden_matrix, lr_scales


def lr_schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warmup, then cosine decay to lr*min_lr_ratio, constant, or warmup-stable-decay."""
    warm = min(tc.warmup_steps, tc.steps)
    low = tc.lr * tc.min_lr_ratio
    warmup = optax.linear_schedule(tc.lr / max(warm, 1), tc.lr, max(warm, 1))
    rest = max(tc.steps - warm, 1)
    if tc.schedule == "constant":
        main = optax.constant_schedule(tc.lr)
    elif tc.schedule == "cosine":
        main = optax.cosine_decay_schedule(tc.lr, rest, alpha=tc.min_lr_ratio)
    else:  # wsd: hold the peak, then decay linearly over the last decay_fraction of all steps
        decay = max(int(round(tc.decay_fraction * tc.steps)), 1)
        stable = max(rest - decay, 0)
        main = optax.join_schedules(
            [optax.constant_schedule(tc.lr), optax.linear_schedule(tc.lr, low, decay)], [stable])
    if warm == 0:
        return main
    return optax.join_schedules([warmup, main], [warm])


def weight_decay_mask(axes: Any, decay_all: bool = False) -> Any:
    """True for the matmul weights, from the parameters' logical axes (``Family.param_axes``;
    see ``models.api.decays``); norms, biases, lookup tables and positional-bias tables are
    not decayed unless ``decay_all``. -> a tree like the parameters of bools."""
    return jax.tree.map(lambda names: decay_all or decays(names), axes, is_leaf=lambda x: isinstance(x, tuple))


def muon_dims(axes: tuple) -> MuonDimensionNumbers | None:
    """How Muon sees a parameter with these logical axes, or None when AdamW keeps it.

    Muon takes the hidden matrices: matmul weights (``decays``) that touch no vocabulary axis,
    so not the token embedding or the output head, nor positional tables, norms or biases.
    Every "layers" axis is a batch axis (a stack of independent matrices, each orthogonalised
    alone). The rest split at the second feature axis: the axes before it are the matrix's
    input (reduction) dims, it and those after it the output dims, so attention's wq
    [L, D, H, E] is L matrices D x (H*E) and wo [L, H, E, D] is L matrices (H*E) x D.
    """
    if not hidden_matrix(axes):
        return None
    dims = [i for i, name in enumerate(axes) if name != "layers"]
    split = [i for i in dims if axes[i] in FEATURE_AXES][1]
    return MuonDimensionNumbers(reduction_axis=tuple(i for i in dims if i < split),
                                output_axis=tuple(i for i in dims if i >= split))


def muon_dimension_numbers(axes: Any) -> Any:
    """A tree like the parameters: ``muon_dims`` of each leaf's logical axes (``axes``, from
    ``Family.param_axes``), None for the leaves AdamW keeps (optax.contrib.muon's convention)."""
    return jax.tree.map(muon_dims, axes, is_leaf=lambda x: isinstance(x, tuple))


def muon_mask(axes: Any) -> Any:
    """A tree like the parameters of bools: True for the leaves Muon takes."""
    return jax.tree.map(lambda names: muon_dims(names) is not None, axes,
                        is_leaf=lambda x: isinstance(x, tuple))


def lr_multipliers(tc: TrainConfig, cfg: Any, axes: Any) -> Any:
    """Each parameter's learning-rate multiplier: ``models.api.lr_scales`` (muP: 1/m on the
    hidden matrices, m = ``cfg.width_mult``; all 1 in the standard parametrization), except
    that the leaves Muon takes (``train.optimizer=muon``) keep 1: Muon's orthogonalised step
    already has a width-independent spectral size, scaled by sqrt(max(1, fan_out/fan_in)),
    which is what muP asks of a hidden matrix's update. -> a tree like the params of floats."""
    scales = lr_scales(cfg, axes)
    if tc.optimizer == "muon":
        scales = jax.tree.map(lambda s, on: 1.0 if on else s, scales, muon_mask(axes))
    return scales


def scale_each(scales: Any) -> optax.GradientTransformation:
    """Multiply each leaf's update by its own float (``scales``, a tree like the params).

    After AdamW (or Muon plus AdamW) this is a per-leaf learning rate: AdamW's update is
    -lr * (adam direction + weight_decay * w), so the decoupled decay is scaled with the lr,
    as when AdamW is given lr * scale for that leaf."""
    return optax.stateless(lambda updates, params: jax.tree.map(lambda u, k: u * k, updates, scales))


def _adamw(tc: TrainConfig, decay_mask: Any) -> optax.GradientTransformation:
    return optax.adamw(lr_schedule(tc), b1=tc.beta1, b2=tc.beta2, eps=tc.eps,
                       weight_decay=tc.weight_decay, mask=decay_mask)


def _muon_and_adamw(tc: TrainConfig, axes: Any) -> optax.GradientTransformation:
    """Muon on the hidden matrices and AdamW on the rest, routed explicitly by ``muon_dims``.

    The routing and the decay mask are computed once, from the logical ``axes`` of the model's
    abstract parameters: inside ``optax.partition`` each group sees the other group's leaves as
    MaskedNode placeholders, which a family's ``param_axes`` need not understand. Every leaf of
    the Muon group has dimension numbers, so ``optax.contrib.muon``'s own Adam fallback (which
    would take any leaf given None) stays empty."""
    labels = jax.tree.map(lambda on: "muon" if on else "adamw", muon_mask(axes))
    matrices = muon(lr_schedule(dataclasses.replace(tc, lr=tc.muon_lr)), beta=tc.muon_beta,
                    weight_decay=tc.weight_decay, muon_weight_dimension_numbers=muon_dimension_numbers(axes))
    rest = _adamw(tc, weight_decay_mask(axes, tc.decay_norms_biases_embeddings))
    return optax.partition({"muon": matrices, "adamw": rest}, labels)


def make_optimizer(tc: TrainConfig, cfg: Any) -> optax.GradientTransformation:
    """AdamW (or Muon plus AdamW: ``train.optimizer``) on the schedule, after global-norm
    clipping of all the gradients together (``grad_clip`` 0 disables clipping).

    ``cfg`` is the model's config: its family's ``param_axes`` give the decay mask, the
    Muon routing and, for a muP model, the learning-rate multipliers (``lr_multipliers``).
    A family that fits its params (``Family.fit``) has no optimizer: identity."""
    family = family_of(cfg)
    if family.fit is not None:
        return optax.identity()
    axes = family.param_axes(jax.eval_shape(lambda: family.init(jax.random.key(0), cfg)))
    if tc.optimizer == "muon":
        tx = _muon_and_adamw(tc, axes)
    else:
        decay_all, param_axes = tc.decay_norms_biases_embeddings, family.param_axes
        tx = _adamw(tc, lambda params: weight_decay_mask(param_axes(params), decay_all))
    scales = lr_multipliers(tc, cfg, axes)
    # Only a muP model gets the extra step: the standard optimizer (and its state's structure,
    # which checkpoints hold) stays exactly what it was.
    if any(s != 1.0 for s in jax.tree.leaves(scales)):
        tx = optax.chain(tx, scale_each(scales))
    if tc.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(tc.grad_clip), tx)
    return tx
