"""JAX's persistent compilation cache, switched on for the ``arlm`` command.

A compiled program is stored on disk under a key made of its HLO, the compile options, the XLA
flags, the devices and the jax/jaxlib versions, so running the same model again (the demo a
second time, ``--resume``, the next run of a sweep with the same shape, ``arlm generate`` on a
checkpoint) loads its programs instead of compiling them: about 3 s less for each ``arlm train``
of the demo's size on a 2-vCPU VM (docs/benchmarks.md, issue 13). MaxText does the same (its
``jax_cache_dir``). Only programs that took at least a second to compile are stored (jax's
threshold). A program loaded from the cache is not compiled, so ``--xla_dump_to`` writes
nothing for it: set ``JAX_COMPILATION_CACHE_DIR=`` (empty) to compile everything afresh.

Where: ``$JAX_COMPILATION_CACHE_DIR`` when the environment sets it (jax reads it itself; empty
turns the cache off), else ``xla/`` in arlm's cache folder (``$ARLM_CACHE``, else
``~/.cache/arlm_jax``, where the token caches live too). It is kept under 2 GiB by evicting the
least recently used programs (``$JAX_COMPILATION_CACHE_MAX_SIZE``, in bytes, overrides). A
folder that cannot be created or written means no cache, not an error. The library itself
(``import arlm_jax``) never changes the setting: that is the caller's choice.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

from arlm_jax.files import cache_root

DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
SIZE_ENV = "JAX_COMPILATION_CACHE_MAX_SIZE"
MAX_BYTES = 2 * 1024**3


def default_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``xla/`` in ``files.cache_root``: ``$ARLM_CACHE/xla``, else ``~/.cache/arlm_jax/xla``."""
    return cache_root(environ) / "xla"


def enable(environ: Mapping[str, str] = os.environ) -> str | None:
    """Point jax's persistent compilation cache at ``default_dir`` unless the environment chose
    a folder itself. -> the folder in use, or None when there is no cache."""
    import jax

    if DIR_ENV in environ:  # the user's choice, already read by jax at import
        return environ[DIR_ENV] or None
    path = default_dir(environ)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if SIZE_ENV not in environ and importlib.util.find_spec("filelock"):  # jax's eviction locks with it
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return str(path)
