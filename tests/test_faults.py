"""Fault injection: ``arlm train`` driven as a subprocess through signals, a folder owned by
another process and a torn metrics log; each case asserts the exit status, the one-line message
and what was kept. docs/reliability.md lists the guarantees these pin.

The subprocesses share one persistent compilation cache (JAX_COMPILATION_CACHE_DIR), so only
the first compiles: a run of the tiny preset then takes ~8 s, mostly process start-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    assert code == 0 and err == "", err  # a clean exit prints nothing to stderr
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
    # a double Ctrl-C, then a SIGTERM: Python runs the handlers of signals pending together in
    # signal-number order, so the first one it handles names the exit
    ([signal.SIGINT, signal.SIGINT, signal.SIGTERM], None),
], ids=["sigterm", "repeated"])
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


def test_a_torn_metrics_log_does_not_block_resume(world, tmp_path):
    """Every kind of damage at once: a torn line followed by whole ones (an older run's tail,
    appended to), garbage, and a last line cut half way (a full disk or a kill)."""
    run = tmp_path / "run"
    rc, _, err = _interrupt(world, run, [signal.SIGTERM], 12)
    assert rc == 143, err
    log = run / "metrics.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    text = b"".join(lines[:3]) + lines[3][:25] + b"\n" + b"".join(lines[4:])
    text += b"\x00\x00\xff{not json\n[1, 2]\n" + lines[5][:-40]
    log.write_bytes(text)
    rc, out, err = _wait(_start(world, run, "--resume"))
    assert rc == 0, err
    assert "dropped 4 line(s)" in out, out
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


@contextlib.contextmanager
def _unwritable(folder: Path):
    """``folder`` made unwritable for this process: chmod for a user; for root (whom modes do
    not stop) the immutable attribute, where chattr works; else the test is skipped."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    else:
        pytest.skip("root, and no chattr +i here: nothing makes a folder unwritable")
    try:
        yield
    finally:
        undo()


@pytest.mark.parametrize("which", ["out_dir", "cache_dir"])
def test_an_unwritable_folder_is_one_line(world, tmp_path, which, capsys):
    folder = tmp_path / which
    folder.mkdir()
    extra = ["--data.cache_dir", str(folder)] if which == "cache_dir" else []
    with _unwritable(folder):
        rc, _, err = _in_process(world, folder if which == "out_dir" else tmp_path / "run", *extra, capsys=capsys)
    needle = "is not writable" if which == "out_dir" else "the token cache folder"
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("name, text, needle", [
    ("lr.toml", '[train]\nlr = "abc"\n', "train.lr='abc' is not a float"),
    ("section.json", '{"train": 5}', "its train section is not a table of options"),
    ("null.json", '{"model": {"d_model": null}}', "model.d_model=None is not an int"),
    ("abc.json", '{"model": {"d_model": "abc"}}', "model.d_model='abc' is not an int"),
    ("steps.json", '{"train": {"steps": 2.5}}', "train.steps='2.5' is not an int"),
    ("unknown.json", '{"bogus": {}}', "bogus is not a config section"),
])
def test_a_config_file_is_validated_like_the_command_line(world, tmp_path, name, text, needle, capsys):
    path = tmp_path / name
    path.write_text(text)
    rc, _, err = _in_process(world, tmp_path / "run", "--config", str(path), capsys=capsys)
    assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_empty_tiktoken_file_is_one_line(world, tmp_path, capsys):
    (tmp_path / "empty.tiktoken").write_text("")
    rc, _, err = _in_process(world, tmp_path / "run", "--data.tokenizer", str(tmp_path / "empty.tiktoken"),
                             capsys=capsys)
    assert rc == 2 and err.count("\n") == 1 and "holds no tokens" in err, err


# ---- integrity and fallback --------------------------------------------------------------------
def _copy_reference(world, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(world["root"] / "reference", run)
    return run


def _same_final_run(world, run: Path) -> None:
    ref = world["root"] / "reference"
    assert _final_val(run)["loss"] == _final_val(ref)["loss"]
    import jax
    for a, b in zip(jax.tree.leaves(_params(run)), jax.tree.leaves(_params(ref))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_flipped_bytes_in_a_checkpoint_are_caught_and_resume_falls_back(world, tmp_path, capsys):
    run = _copy_reference(world, tmp_path)
    files = [p for p in (run / "checkpoints" / str(STEPS) / "state").rglob("*") if p.is_file()]
    victim = max(files, key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    for i in np.random.default_rng(0).choice(len(raw), 3, replace=False):
        raw[i] ^= 0xFF
    victim.write_bytes(bytes(raw))
    from arlm_jax.cli.main import main
    rc = main(["eval", str(run)])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and f"step {STEPS} in" in err and "does not match its SHA-256" in err, err
    rc, out, err = _wait(_start(world, run, "--resume"))
    assert rc == 0, err
    assert f"--resume: skipped checkpoint: step {STEPS}" in out and f"resumed from step {STEPS - CKPT_EVERY}" in out
    assert (run / "set_aside" / f"{STEPS}.corrupt" / "state").is_dir()  # kept, out of orbax's sight
    _same_final_run(world, run)


def test_resume_step_restarts_from_an_older_checkpoint(world, tmp_path):
    run = _copy_reference(world, tmp_path)
    rc, out, err = _wait(_start(world, run, "--resume-step", "20"))
    assert rc == 0, err
    assert "resumed from step 20" in out and "step 30 moved to" in out and "step 40 moved to" in out, out
    assert sorted(p.name for p in (run / "set_aside").iterdir()) == ["30.newer", "40.newer"]
    _same_final_run(world, run)


def test_the_checkpoint_config_is_authoritative_over_config_json(world, tmp_path, capsys):
    run = _copy_reference(world, tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["norm_eps"] = 1e-3
    (run / "config.json").write_text(json.dumps(cfg))
    from arlm_jax.cli.main import main
    rc = main(["eval", str(run)])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "says model.norm_eps=0.001 but the checkpoint" in err, err


def test_a_damaged_token_cache_is_rebuilt_and_bad_ids_are_refused(world, tmp_path):
    from arlm_jax.config import DataConfig
    from arlm_jax.data import tokens as data_lib
    from arlm_jax.data.tokenizer import load_tokenizer
    enc, cfg = load_tokenizer("byte"), DataConfig(corpus=str(world["corpus"]))
    first = data_lib.build_token_cache(cfg, enc, tmp_path)
    want = np.array(first.train)
    bins = sorted(tmp_path.glob("tokens-*.train.bin"))
    bins[0].write_bytes(b"\0" * bins[0].stat().st_size)  # zeroed in place: size and meta unchanged
    again = data_lib.build_token_cache(cfg, enc, tmp_path)
    assert "failed their checksum; rebuilt them" in again.note
    np.testing.assert_array_equal(np.array(again.train), want)
    assert data_lib.build_token_cache(cfg, enc, tmp_path).note == ""
    with pytest.raises(data_lib.ConfigError, match="holds id 259 in its train split, >= model.vocab_size=259"):
        data_lib.check_ids_below(dataclasses.replace(again, train=np.array([1, 259], np.uint16)), 259)


# ---- resources ---------------------------------------------------------------------------------
def _enospc(*a, **k):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["checkpoint", "async-checkpoint", "metrics", "device-memory"])
def test_resource_failures_are_one_line_and_keep_the_earlier_checkpoints(world, tmp_path, where, monkeypatch,
                                                                         capsys):
    from arlm_jax import checkpoint
    from arlm_jax.train import loop
    calls = {"n": 0}

    def after(n: int, real, fail):
        def f(*a, **k):
            calls["n"] += 1
            return (fail if calls["n"] > n else real)(*a, **k)
        return f
    if where == "checkpoint":  # the second save hits a full disk
        monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save",
                            after(1, checkpoint.ocp.CheckpointManager.save, _enospc))
        needle = "checkpoint: saving step 20 in"
    elif where == "async-checkpoint":  # the background write fails; it surfaces at the next wait
        monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "wait_until_finished",
                            after(2, checkpoint.ocp.CheckpointManager.wait_until_finished, _enospc))
        needle = "checkpoint: saving step 10 in"
    elif where == "metrics":
        monkeypatch.setattr(loop, "append_jsonl", after(15, loop.append_jsonl, _enospc))
        needle = "metrics: cannot append to"
    else:
        real = loop.make_train_step

        def oom(*a, **k):
            step = real(*a, **k)
            return after(12, step, lambda *a: (_ for _ in ()).throw(RuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes.")))
        monkeypatch.setattr(loop, "make_train_step", oom)
        needle = "out of device memory (RESOURCE_EXHAUSTED: Out of memory"
    run = tmp_path / "run"
    rc, _, err = _in_process(world, run, capsys=capsys)
    assert rc == 1 and err.count("\n") == 1 and err.startswith("arlm: error: ") and needle in err, err
    assert "No space left on device" in err or where == "device-memory"
    assert (run / "checkpoints" / "10").is_dir()
    monkeypatch.undo()
    from arlm_jax.train.run_dir import load_run
    assert load_run(run, 10)[2]["step"] == 10  # intact


def test_a_model_that_cannot_fit_is_refused_before_allocating(world, tmp_path, capsys):
    rc, _, err = _in_process(world, tmp_path / "run", "--model.d_model", "100000", "--model.n_heads", "4",
                             capsys=capsys)
    assert rc == 2 and err.count("\n") == 1 and "the train state needs" in err and "GiB per device" in err, err


def test_plan_bounds_its_device_count(capsys):
    from arlm_jax.cli.main import main
    rc = main(["plan", "--preset", "tiny", "--devices", "100000"])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "devices=100000 is more than the 4096" in err, err


def test_a_cache_dir_that_is_a_file_is_one_line(world, tmp_path, capsys):
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    rc, _, err = _in_process(world, tmp_path / "run", "--data.cache_dir", str(blocker), capsys=capsys)
    assert rc == 2 and err.count("\n") == 1 and "the token cache folder" in err and "cannot be written" in err, err


@pytest.mark.parametrize("size", ["-2", "0"])
def test_eval_batch_size_is_validated(world, size, capsys):
    from arlm_jax.cli.main import main
    rc = main(["eval", str(world["root"] / "reference"), "--batch-size", size])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and f"--batch-size={size} must be > 0" in err, err


def test_temporaries_of_dead_writers_are_removed(tmp_path):
    from arlm_jax.files import remove_stale_temporaries
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    stale = tmp_path / f".tokens-abc.train.bin.{dead.pid}.x1y2.tmp"
    live = tmp_path / f".tokens-abc.val.bin.{os.getpid()}.z3w4.tmp"
    other = tmp_path / "tokens-abc.json"
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
