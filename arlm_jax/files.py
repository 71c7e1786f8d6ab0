"""Writing a file all at once (every file arlm_jax rewrites in place goes through here), the
checksum of a file, and where arlm keeps its caches.

``atomic_write`` writes a temporary file beside the target, flushes it to disk and renames it
over the target, so a kill, a full disk or any failure leaves either the old file or the new
one, never a part. The temporary file's name carries the writer's PID
(``.<name>.<pid>.<random>.tmp``), so ``remove_stale_temporaries`` can clean up after a killed
writer without touching a live one's.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, TypeVar

T = TypeVar("T")
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


def atomic_write(path: Path, write: Callable[[BinaryIO], T]) -> T:
    """Run ``write(fh)`` on a temporary binary file beside ``path``, make it durable, rename it
    onto ``path``; -> what ``write`` returned. On any failure the temporary file is removed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            out = write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; shared caches and run folders stay readable
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return out


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder of arlm's caches (token caches, compiled programs): $ARLM_CACHE, else
    ~/.cache/arlm_jax."""
    return Path(environ.get("ARLM_CACHE") or "~/.cache/arlm_jax").expanduser()


def require_new_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, when nothing is there or an empty folder; else a one-line ConfigError
    (``what`` names the option or function, e.g. "--out"). Writers of whole folders (converted
    runs, Hugging Face exports) never mix their files with someone else's."""
    from arlm_jax.errors import ConfigError

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"{what} {str(path)!r} exists and is not an empty folder; choose a new one")
    return path


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files of ``atomic_write`` calls whose writer is no longer running;
    -> how many. Unreadable folders and races with other cleaners are ignored."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        m = _TMP.match(e.name)
        if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            try:
                os.unlink(e.path)
                removed += 1
            except OSError:
                pass
    return removed
