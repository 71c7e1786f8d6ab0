"""The one error type for bad user input, and the checks every config section shares.

``str(ConfigError)`` is a one-line message naming the field and what is allowed, so the CLI
prints it without a traceback and exits with status 2.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad user-supplied value. ``str(err)`` is a one-line message for the user."""


class ResourceError(ConfigError):
    """A resource failed (a full disk, a folder that cannot be written, device memory): one
    line naming it and what to do; the CLI exits with status 1, not 2 (bad input)."""


def check_choice(obj: Any, name: str, allowed: tuple[str, ...], prefix: str) -> None:
    """ConfigError unless ``obj.name`` is one of ``allowed`` (``prefix`` names the section)."""
    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{prefix}.{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def check_positive(obj: Any, name: str, prefix: str, *, allow_zero: bool = False) -> None:
    """ConfigError unless ``obj.name`` > 0 (or >= 0 with ``allow_zero``)."""
    value = getattr(obj, name)
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{prefix}.{name}={value!r} must be {bound}")


def known_failure(err: Exception) -> str | None:
    """The one line for a run that failed for a known reason (divergence, out of device
    memory), else None (a bug: the caller lets the traceback show)."""
    from arlm_jax.train.metrics import TrainingDiverged  # the training loop imports this module
    if isinstance(err, TrainingDiverged):
        return str(err)
    text = str(err)
    if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text:
        first = next((ln.strip() for ln in text.splitlines() if "RESOURCE_EXHAUSTED" in ln or "memory" in ln),
                     text.splitlines()[0] if text else type(err).__name__)
        return (f"out of device memory ({first[:200]}); lower train.batch_size or train.seq_len, use "
                f"--model.remat full, a smaller model or more devices (arlm plan estimates the memory); "
                f"the earlier checkpoints are intact")
    return None
