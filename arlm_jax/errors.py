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
