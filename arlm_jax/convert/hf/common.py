"""What the architectures' converters share: reading config fields with one-line errors, and
stacking per-layer tensors on the layer axis our parameter tree keeps."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from arlm_jax.errors import ConfigError
from arlm_jax.models.transformer.config import TransformerConfig


@dataclasses.dataclass(frozen=True)
class Arch:
    """One Hugging Face architecture both ways (gpt2.py, llama.py)."""

    model_type: str  # config.json's model_type
    architecture: str  # config.json's architectures[0], the class AutoModelForCausalLM builds
    config_from_hf: Callable[[dict], TransformerConfig]
    params_from_hf: Callable[[Any, TransformerConfig], dict]  # (Tensors, cfg) -> numpy params
    ignorable: tuple[str, ...]  # tensor-name endings that are buffers, not weights
    exportable: Callable[[TransformerConfig], list[str]]  # the fields that rule it out ([] = ok)
    config_to_hf: Callable[[TransformerConfig], dict]
    params_to_hf: Callable[[dict, TransformerConfig], dict[str, np.ndarray]]  # numpy float32 params in


def field(hf: dict, name: str, default: Any = ..., *, kind: type | tuple = (int,)) -> Any:
    """``hf[name]`` (or ``default`` when absent), which must be of ``kind``; else a ConfigError."""
    if name not in hf or hf[name] is None:
        if default is ...:
            raise ConfigError(f"hf: config.json has no {name}; it is needed for model_type={hf.get('model_type')!r}")
        return default
    value = hf[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        want = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"hf: config.json field {name}={value!r} must be {want}")
    return value


def refuse(hf: dict, name: str, value: Any, why: str) -> None:
    """A one-line ConfigError: config.json's ``name`` is ``value``, which arlm_jax cannot hold."""
    raise ConfigError(f"hf: config.json field {name}={value!r} is not supported ({why}; model_type="
                      f"{hf.get('model_type')!r})")


def stacked(n_layers: int, read: Callable[[int], np.ndarray]) -> np.ndarray:
    """[L, ...] of ``read(i)`` for each layer i."""
    return np.stack([read(i) for i in range(n_layers)])


def canonical(cfg: TransformerConfig) -> TransformerConfig:
    """``cfg`` with ``n_kv_heads`` and ``d_ff`` left to their defaults where they equal them, so a
    model read from HF compares equal to the one that was written."""
    if cfg.n_kv_heads == cfg.n_heads:
        cfg = dataclasses.replace(cfg, n_kv_heads=None)
    if cfg.d_ff is not None and cfg.d_ff == dataclasses.replace(cfg, d_ff=None).ff_dim:
        cfg = dataclasses.replace(cfg, d_ff=None)
    return cfg.validate()


def shared_refusals(cfg: TransformerConfig, arch: str) -> list[str]:
    """Fields no HF architecture we write can hold."""
    out = []
    if cfg.norm_position != "pre":
        out.append(f"model.norm_position={cfg.norm_position!r} ({arch} is pre-norm)")
    if cfg.width_mult != 1.0:
        out.append(f"model.parametrization='mup' at width_mult={cfg.width_mult:g} ({arch} scales logits and "
                   f"attention the standard way)")
    return out
