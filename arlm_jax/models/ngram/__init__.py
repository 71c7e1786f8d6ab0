"""The ``ngram`` family: n-gram LMs with interpolated (modified) Kneser-Ney or add-k smoothing,
counted rather than trained (``Family.fit``), then evaluated and decoded like every family.

config.py (NGramConfig, presets), counts.py (NumPy counting and the estimate), tables.py (the
parameter tables), query.py (the jittable query), model.py (the family's functions). ARPA
export and import: arlm_jax/convert/arpa.py.
"""

from __future__ import annotations

from arlm_jax.models.api import Family, register, take_rows
from arlm_jax.models.ngram import model
from arlm_jax.models.ngram.config import NGramConfig, presets
from arlm_jax.models.ngram.model import NGramState, fit_tables

FAMILY = register(Family(
    name="ngram",
    config=NGramConfig,
    presets=presets(),
    default_preset="demo",
    init=model.init,
    param_axes=model.param_axes,
    forward=model.forward,
    init_state=model.init_state,
    prefill=model.prefill,
    context_len=lambda cfg: None,  # reads only its last N-1 tokens, so any length goes
    state_axes=model.state_axes,
    flops_per_token=lambda cfg, seq_len=None: 0.0,  # lookups, no matmuls
    describe=model.describe,
    reorder=take_rows,
    rollback=model.rollback,
    max_rollback=lambda cfg: cfg.history,
    fit=model.fit,
))

__all__ = ["FAMILY", "NGramConfig", "NGramState", "fit_tables"]
