"""The recurrent families ``rnn`` (Elman), ``lstm`` and ``gru``: one config (config.py), the
cells (cells.py), the model and its decoding state (model.py). Each cell is its own family, so
``--model.family lstm`` picks it."""

from __future__ import annotations

import dataclasses

from arlm_jax.models.api import Family, register, take_rows
from arlm_jax.models.rnn import cells, model
from arlm_jax.models.rnn.config import RecurrentConfig, presets
from arlm_jax.models.rnn.model import RecurrentState

FAMILIES = {name: register(Family(
    name=name,
    config=RecurrentConfig,
    presets=presets(name),
    default_preset="demo",
    init=model.init,
    param_axes=model.param_axes,
    forward=model.forward,
    init_state=model.init_state,
    prefill=model.prefill,
    context_len=lambda cfg: None,
    state_axes=model.state_axes,
    flops_per_token=model.flops_per_token,
    describe=model.describe,
    reorder=take_rows,  # the ring and the lengths are batch-leading
    rollback=model.rollback,
    max_rollback=lambda cfg: cfg.history - 1,
    # the time scan (forward and backward) with n steps per iteration; it runs seq_len steps
    unrolled=lambda cfg, n: dataclasses.replace(cfg, unroll=n),
    depth=lambda cfg, seq_len: seq_len,
    # a sweep's width is the hidden units, and the embedding (the tied output's size) follows
    resize=lambda cfg, width, depth: dataclasses.replace(cfg, d_hidden=width, d_embed=width, n_layers=depth),
)) for name in cells.CELLS}

__all__ = ["FAMILIES", "RecurrentConfig", "RecurrentState"]
