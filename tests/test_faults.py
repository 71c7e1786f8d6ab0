"""Fault injection: ``arlm train`` driven as a subprocess through signals, a folder owned by
another process and a torn metrics log; each case asserts the exit status, the one-line message
and what was kept. docs/reliability.md lists the guarantees these pin.

The subprocesses share one persistent compilation cache (JAX_COMPILATION_CACHE_DIR), so only
the first compiles: a run of the tiny preset then takes ~8 s, mostly process start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from arlm_jax.files import atomic_write_text
from arlm_jax.train.run_dir import read_jsonl

STEPS, CKPT_EVERY = 40, 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small corpus, its token cache, a shared compilation cache, and the uninterrupted run."""
    root = tmp_path_factory.mktemp("faults")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j} - {i}\n" for j in range(60)))
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    w = {"root": root, "corpus": corpus, "env": env}
    code, _, err = _wait(_start(w, root / "reference"))
    assert code == 0, err
    return w


def _argv(w: dict, out_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "arlm_jax.cli", "train", "--preset", "tiny", "--data.corpus", str(w["corpus"]),
            "--data.cache_dir", str(w["root"] / "cache"), "--train.out_dir", str(out_dir), "--train.steps", str(STEPS), "--train.ckpt_every", str(CKPT_EVERY),
            "--train.log_every", "1", "--train.eval_every", "20", "--train.progress", "false",
            "--train.sample_tokens", "0", "--mesh.devices", "1", *extra]


def _start(w: dict, out_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_argv(w, out_dir, *extra), env=w["env"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(p: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _final_val(run_dir: Path) -> dict:
    rows, bad = read_jsonl(run_dir / "metrics.jsonl")
    assert bad == 0
    return [r for r in rows if r["split"] == "val" and r["step"] == STEPS][-1]


def _params(run_dir: Path):
    from arlm_jax.train.run_dir import load_run
    return load_run(run_dir)[1]


def _interrupt(w: dict, out_dir: Path, signals: list[int], at_step: int) -> tuple[int, str, str]:
    """Start a run, send ``signals`` (20 ms apart) once it has logged ``at_step``."""
    p = _start(w, out_dir)
    for line in p.stdout:
        if line.startswith("step") and int(line.split()[1]) >= at_step:
            for s in signals:
                p.send_signal(s)
                time.sleep(0.02)
            break
    return _wait(p)


@pytest.mark.parametrize("signals, code", [
    ([signal.SIGTERM], 143),
    ([signal.SIGINT, signal.SIGINT], 130),  # a double Ctrl-C
    # Python runs the handlers of signals pending together in signal-number order: the first one
    # it handles names the exit
    ([signal.SIGTERM, signal.SIGINT, signal.SIGTERM], None),
], ids=["sigterm", "double-sigint", "mixed"])
def test_a_signal_saves_the_current_step_and_resume_finishes_the_same_run(world, tmp_path, signals, code):
    at = int(np.random.default_rng(len(signals) * 7 + signals[0]).integers(3, STEPS - 5))  # seeded
    run = tmp_path / "run"
    rc, out, err = _interrupt(world, run, signals, at)
    name = signal.Signals(rc - 128).name if code is None else signal.Signals(signals[0]).name
    assert rc == (code or 128 + signal.Signals[name]) and rc in (130, 143), err
    assert err.count("\n") == 1 and err.startswith(f"arlm: stopped by {name} at step "), err
    stopped = int(err.split(" at step ")[1].split(":")[0])
    assert at <= stopped < STEPS
    assert (run / "checkpoints" / str(stopped)).is_dir()  # the current step, not only the last periodic one
    rc, out, err = _wait(_start(world, run, "--resume"))
    assert rc == 0, err
    assert f"resumed from step {stopped}" in out
    ref = world["root"] / "reference"
    assert _final_val(run)["loss"] == _final_val(ref)["loss"]
    for a, b in zip(*(map(np.asarray, __import__("jax").tree.leaves(_params(d))) for d in (run, ref))):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def stopped(world):
    """A run stopped by SIGTERM at step 12 or a little later, to be copied and damaged."""
    run = world["root"] / "stopped"
    rc, _, err = _interrupt(world, run, [signal.SIGTERM], 12)
    assert rc == 143, err
    return run


@pytest.mark.parametrize("damage", ["cut", "garbage", "torn-middle"])
def test_a_torn_metrics_log_does_not_block_resume(world, stopped, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    log = run / "metrics.jsonl"
    text = log.read_bytes()
    if damage == "cut":  # the last line cut half way, as a full disk or a kill leaves it
        text = text[:-40]
    elif damage == "garbage":
        text += b"\x00\x00\xff{not json\n[1, 2]\n"
    else:  # a torn line followed by whole ones (an older run's tail, appended to)
        lines = text.splitlines(keepends=True)
        text = b"".join(lines[:3]) + lines[3][:25] + b"\n" + b"".join(lines[4:])
    log.write_bytes(text)
    rc, out, err = _wait(_start(world, run, "--resume"))
    assert rc == 0, err
    assert "dropped 1 line(s)" in out or "dropped 2 line(s)" in out, out
    rows, bad = read_jsonl(log)
    assert bad == 0 and rows[-1]["split"] == "val" and rows[-1]["step"] == STEPS
    assert _final_val(run)["loss"] == _final_val(world["root"] / "reference")["loss"]


def test_a_failed_rewrite_leaves_the_old_file(tmp_path, monkeypatch):
    """atomic_write: a failure at the rename (or before it) keeps the old content, no temp file."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"split": "train", "step": 1}\n')

    def full_disk(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        atomic_write_text(path, "new\n" * 1000)
    assert path.read_text() == '{"split": "train", "step": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


_HOLD = """
import sys, time
from arlm_jax.train.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _in_process(w: dict, out_dir: Path, *extra: str, capsys) -> tuple[int, str, str]:
    """``arlm train`` in this process, for the cases refused before anything compiles."""
    from arlm_jax.cli.main import main
    code = main(_argv(w, out_dir, *extra)[3:])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_folder_owned_by_another_process_is_refused(world, tmp_path, resume, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, _, err = _in_process(world, run, *(["--resume"] if resume else []), capsys=capsys)
        assert rc == 2 and err.count("\n") == 1, err
        assert err.startswith(f"arlm: error: train.out_dir={str(run)!r} is in use by another arlm train "
                              f"(pid {holder.pid})"), err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()  # kill -9: the kernel drops its lock, none is left stale
        holder.wait()
    from arlm_jax.train.lock import run_lock
    with run_lock(run):
        assert (run / ".lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_an_out_dir_that_cannot_be_a_folder_is_one_line(world, tmp_path, kind, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    out_dir = blocker if kind == "file" else blocker / "run"
    rc, _, err = _in_process(world, out_dir, capsys=capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("arlm: error: train.out_dir="), err
    assert blocker.read_text() == "x"


def test_a_read_only_out_dir_is_one_line(world, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    run = tmp_path / "ro"
    run.mkdir()
    run.chmod(0o555)
    try:
        rc, _, err = _in_process(world, run, capsys=capsys)
    finally:
        run.chmod(0o755)
    assert rc == 2 and err.count("\n") == 1 and "is not writable" in err, err
    shutil.rmtree(run)
