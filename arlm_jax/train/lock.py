"""One owner per run folder: an advisory ``fcntl.flock`` on ``<out_dir>/.lock``.

A trainer holds the lock from before it reads the folder's checkpoints until it returns. The
kernel releases a ``flock`` when its holder exits in any way (``kill -9`` included), so a lock
is never stale: the file staying behind means nothing, only a live holder counts. The holder
writes its PID into the file so that a second trainer's one-line error can name it.

In a multi-process run only process 0 takes the lock (the processes share one folder).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from arlm_jax.errors import ConfigError

LOCK_NAME = ".lock"


class RunFolderBusy(ConfigError):
    """Another live process owns the run folder."""


def make_run_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (and its parents); a one-line ConfigError where it cannot be."""
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"train.out_dir={str(out_dir)!r} is a file, not a folder; choose a folder") from None
    except NotADirectoryError:
        raise ConfigError(f"train.out_dir={str(out_dir)!r}: a part of this path is a file, not a folder") from None
    except OSError as err:
        raise ConfigError(f"train.out_dir={str(out_dir)!r} cannot be created ({err.strerror}); "
                          f"choose a folder you can write to") from None
    return path


@contextlib.contextmanager
def run_lock(out_dir: str | Path, *, enabled: bool = True) -> Iterator[None]:
    """Own ``out_dir`` for the ``with`` block: RunFolderBusy (one line, with the owner's PID)
    if another process owns it; a ConfigError if the folder cannot be made or written."""
    if not enabled:
        yield
        return
    path = make_run_dir(out_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"train.out_dir={str(out_dir)!r} is not writable ({err.strerror}); "
                          f"choose a folder you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"train.out_dir={str(out_dir)!r}: cannot lock {path.name} "
                                  f"({err.strerror})") from None
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderBusy(f"train.out_dir={str(out_dir)!r} is in use by another arlm train (pid "
                                f"{owner}); wait for it to finish or choose another train.out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
