"""The optimizer: AdamW with warmup and a cosine, constant or warmup-stable-decay schedule,
global-norm clipping, and a weight-decay mask derived from the parameters' logical axes."""

from __future__ import annotations

from typing import Any

import jax
import optax

from arlm_jax.config import TrainConfig
from arlm_jax.models import family_of
from arlm_jax.models.api import decays


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


def make_optimizer(tc: TrainConfig, cfg: Any) -> optax.GradientTransformation:
    """AdamW on the schedule, after global-norm clipping (``grad_clip`` 0 disables clipping).

    ``cfg`` is the model's config: its family's ``param_axes`` give the decay mask."""
    decay_all, param_axes = tc.decay_norms_biases_embeddings, family_of(cfg).param_axes
    adamw = optax.adamw(lr_schedule(tc), b1=tc.beta1, b2=tc.beta2, eps=tc.eps,
                        weight_decay=tc.weight_decay,
                        mask=lambda params: weight_decay_mask(param_axes(params), decay_all))
    if tc.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw)
    return adamw
