"""Logical axis names of every Transformer parameter (parallel/rules.py maps them to the mesh).

Works on the stacked training layout (blocks [L, ...]) and on ``decode_params``' per-layer
list alike: the names come from this family's own parameter tree (model.py documents it).
"""

from __future__ import annotations

from typing import Any

import jax

from arlm_jax.errors import ConfigError
from arlm_jax.parallel.shardings import path_keys

# One block's weights (a stacked tree adds "layers" in front).
_BLOCK_AXES = {
    "wq": ("embed", "heads", "head_dim"), "wk": ("embed", "kv_heads", "head_dim"),
    "wv": ("embed", "kv_heads", "head_dim"), "wo": ("heads", "head_dim", "embed"),
    "bq": ("heads", "head_dim"), "bk": ("kv_heads", "head_dim"), "bv": ("kv_heads", "head_dim"),
    "bo": ("norm",),
    "w_in": ("embed", "mlp"), "w_gate": ("embed", "mlp"), "w_up": ("embed", "mlp"),
    "w_out": ("mlp", "embed"), "w_down": ("mlp", "embed"), "b_in": ("mlp",), "b_out": ("norm",),
    "scale": ("norm",), "bias": ("norm",),
}
# Outside the blocks: lookup tables (rows first), the positional-bias table (replicated), the
# output head.
_TOP_AXES = {("embed", "tok"): ("vocab", "embed"), ("embed", "pos"): ("length", "embed"),
             ("rel_bias",): (None, None), ("lm_head", "w"): ("embed", "vocab")}

# A decoding state (KVCache): [B, K, S, E] buffers and int32 [B] lengths.
CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


def _leaf_axes(keys: tuple[str, ...], ndim: int) -> tuple | None:
    for top, axes in _TOP_AXES.items():
        if keys[-len(top):] == top and len(axes) == ndim:
            return axes
    if keys and keys[-1] in _BLOCK_AXES:
        axes = _BLOCK_AXES[keys[-1]]
        if ndim == len(axes) + 1:  # stacked blocks [L, ...]
            return ("layers",) + axes
        if ndim == len(axes):  # per-layer list (decode layout), final_norm, ...
            return axes
    return None


def param_axes(params: Any) -> Any:
    """A tree like ``params`` (arrays or ShapeDtypeStructs) of tuples of logical axis names."""
    def axes(path: tuple, leaf: Any) -> tuple:
        found = _leaf_axes(path_keys(path), len(leaf.shape))
        if found is None:
            raise ConfigError(f"transformer: no logical axes for parameter {'/'.join(path_keys(path))} "
                              f"of shape {tuple(leaf.shape)}; add it to models/transformer/axes.py")
        return found
    return jax.tree_util.tree_map_with_path(axes, params)


def state_axes(state: Any) -> Any:
    """Logical axes of a KV cache's leaves: buffers as CACHE_AXES, lengths over the batch."""
    return jax.tree.map(lambda a: CACHE_AXES if a.ndim == 4 else ("batch",), state)
