"""Joining a multi-process (multi-host) run on JAX's own multi-controller runtime.

Every process runs the same program. After ``initialize``, ``jax.devices()`` lists the
devices of all processes and ``sharding.make_mesh`` spans them; each process feeds only its
rows of every batch (``sharding.process_rows`` / ``global_batch``) and orbax writes one
checkpoint together. On TPU pods and under SLURM or Open MPI, JAX finds the coordinator
itself (``initialize()`` with no arguments); elsewhere give the coordinator's ``host:port``,
the process count and this process's index, as flags or through the environment variables
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.

Must run before anything else touches JAX's devices.
"""

from __future__ import annotations

import os
import socket
import time

import jax

from arlm_jax.errors import ConfigError


class DistributedError(ConfigError):
    """A multi-process run that cannot start; a one-line message."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} must be an integer") from None


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"coordinator={address!r} must be HOST:PORT, e.g. 10.0.0.1:1234")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Poll ``address`` until it accepts a TCP connection; DistributedError after ``timeout`` s.

    JAX's own wait ends in a C++ abort (no Python error, no message worth reading), so the
    processes that connect to the coordinator probe it first.
    """
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=min(2.0, timeout)).close()
            return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"coordinator {address} cannot be reached after {timeout:g}s ({err.strerror or err}); "
                    f"start process 0 there first, or check --coordinator and the firewall") from None
            time.sleep(0.25)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False, timeout: float = 300.0) -> bool:
    """Join the run; returns False (and does nothing) for a single-process run.

    Arguments left None come from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID``. ``auto`` (or ``num_processes`` > 1 without a coordinator) uses JAX's
    cluster auto-detection instead (TPU pod slices, SLURM, Open MPI). ``timeout`` bounds the
    wait for the coordinator (processes other than 0) and for all processes to register.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if num_processes is None and coordinator is None and not auto:
        return False
    if timeout <= 0:
        raise DistributedError(f"timeout={timeout} must be > 0 seconds")
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"num_processes={num_processes} must be >= 1")
    if num_processes == 1 and coordinator is None and not auto:
        return False
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise DistributedError("coordinator is set: also give num_processes and process_id "
                                   "(--num-processes, --process-id or JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
        if not 0 <= process_id < num_processes:
            raise DistributedError(f"process_id={process_id} must be in 0..{num_processes - 1} "
                                   f"(num_processes={num_processes})")
        _split_address(coordinator)
        if process_id != 0:
            wait_for_coordinator(coordinator, timeout)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=max(int(timeout), 1))
    except (RuntimeError, ValueError) as err:  # e.g. called after JAX already started its backend
        raise DistributedError(f"jax.distributed.initialize failed: {str(err).splitlines()[0]}") from None
    return True
