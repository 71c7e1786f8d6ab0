"""A real two-process run on localhost (jax.distributed, CPU collectives) against one process."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from arlm_jax.cli import main as cli
from arlm_jax.parallel import distributed
from arlm_jax.config import DataConfig, MeshConfig, RunConfig, TrainConfig
from arlm_jax.data.tokens import build_token_cache
from arlm_jax.data.tokenizer import load_tokenizer
from arlm_jax.train.loop import train
from arlm_jax.train.run_dir import load_run
from conftest import tiny
from test_cli import one_line_error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    fast_compile = {"XLA_FLAGS": os.environ["ARLM_TEST_XLA_FLAGS"]}  # as conftest sets for this process
    return env | {"PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"} | fast_compile | extra


def _launch(argvs: list[list[str]], env: dict, timeout: float = 240) -> list[tuple[int, str, str]]:
    """Run the processes together; kill the rest as soon as one fails (a peer would hang)."""
    procs = [subprocess.Popen([sys.executable, "-m", "arlm_jax.cli", *a], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in argvs]
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                p.kill()
            break
        time.sleep(0.2)
    return [(p.wait(), *p.communicate()) for p in procs]


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x - {j}\n" for j in range(40)))
    data = DataConfig(corpus=str(corpus), cache_dir=str(tmp_path / "cache"))
    build_token_cache(data, load_tokenizer("byte"))  # once, before the processes read it
    tc = dict(steps=4, batch_size=8, eval_every=2, eval_batches=2, log_every=2, ckpt_every=2,
              warmup_steps=2, sample_tokens=0, progress=False)
    model = tiny(vocab_size=260)

    # one process, one device
    single = train(RunConfig(preset="tiny", model=model, data=data, mesh=MeshConfig(devices=1),
                             train=TrainConfig(out_dir=str(tmp_path / "one"), **tc)).validate(),
                   out=open("/dev/null", "w"))

    # two processes x two CPU devices: data=2 (one per process) x fsdp=2
    flags = ["train", "--preset", "tiny", "--model.vocab_size", "260", "--data.corpus", str(corpus),
             "--data.cache_dir", str(tmp_path / "cache"), "--train.out_dir", str(tmp_path / "two"),
             "--mesh.data", "2", "--mesh.fsdp", "2", "--distributed-timeout", "60",
             "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
    flags += [x for k, v in tc.items() for x in (f"--train.{k}", str(v))]
    results = _launch([flags + ["--process-id", str(i)] for i in range(2)], _env(JAX_NUM_CPU_DEVICES="2"))
    for code, out, err in results:
        assert code == 0, err[-3000:]
    # Gloo's C++ threads print "[Gloo] Rank r is connected to n peer ranks. Expected number of connected
    # peer ranks is : n" to the same stdout, and two threads' pieces interleave anywhere in a line: drop
    # that message's words and numbers wherever they fall; nothing else may remain of process 1's output
    gloo = r"\[Gloo\]|\b(?:Rank|is|connected|to|peer|ranks|Expected|number|of)\b|\d+|[.:\s]"
    assert "validation at step 4" in results[0][1]  # process 0 reports
    assert re.sub(gloo, "", results[1][1]) == "", results[1][1][-2000:]  # process 1 prints nothing of ours
    val = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in val if r["split"] == "val" and r["step"] == 4][0]
    np.testing.assert_allclose(final["loss"], single.val["loss"], rtol=1e-5)

    # the checkpoint both processes wrote restores here, onto one device, equal to one process's
    _, params, meta = load_run(tmp_path / "two")
    assert meta["step"] == 4
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-6)

    # ... and the two processes' step-2 checkpoint resumes in this one process on another mesh
    # (4 devices, fsdp=2 x tensor=2), finishing the same trajectory as the one-process run
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "4")
    resumed = train(RunConfig(preset="tiny", model=model, data=data,
                              mesh=MeshConfig(data=1, fsdp=2, tensor=2, devices=4),
                              train=TrainConfig(out_dir=str(resumed_dir), **tc)).validate(),
                    resume=True, out=open("/dev/null", "w"))
    assert resumed.start_step == 2
    np.testing.assert_allclose(resumed.val["loss"], single.val["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(single.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-6)


def test_unreachable_coordinator_is_a_bounded_one_line_error(capsys):
    t0 = time.monotonic()
    code = cli.main(["train", "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
                     "--process-id", "1", "--distributed-timeout", "1.5"])
    err = capsys.readouterr().err
    one_line_error(code, err, "cannot be reached after 1.5s")
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("kwargs, needle", [
    (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=2), "process_id=2 must be in 0..1"),
    (dict(coordinator="127.0.0.1", num_processes=2, process_id=1), "must be HOST:PORT"),
    (dict(coordinator="127.0.0.1:1234", num_processes=2), "also give num_processes and process_id"),
    (dict(num_processes=0), "num_processes=0 must be >= 1"),
])
def test_bad_distributed_arguments(kwargs, needle):
    with pytest.raises(distributed.DistributedError, match=needle) as err:
        distributed.initialize(**kwargs)
    assert "\n" not in str(err.value)


def test_single_process_needs_no_initialize(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    """A scheduler's SIGTERM reaches one process of two: JAX's preemption service agrees on a
    step, both save it together and exit 143; the checkpoint restores here."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x - {j}\n" for j in range(40)))
    data = DataConfig(corpus=str(corpus), cache_dir=str(tmp_path / "cache"))
    build_token_cache(data, load_tokenizer("byte"))
    flags = ["train", "--preset", "tiny", "--model.vocab_size", "260", "--data.corpus", str(corpus),
             "--data.cache_dir", str(tmp_path / "cache"), "--train.out_dir", str(tmp_path / "run"),
             "--mesh.data", "2", "--mesh.fsdp", "1", "--distributed-timeout", "60",
             "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--train.steps", "2000",
             "--train.batch_size", "8", "--train.log_every", "1", "--train.ckpt_every", "1000",
             "--train.eval_every", "1000", "--train.progress", "false", "--train.sample_tokens", "0"]
    env = _env(JAX_NUM_CPU_DEVICES="1")
    procs = [subprocess.Popen([sys.executable, "-m", "arlm_jax.cli", *flags, "--process-id", str(i)], env=env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    try:
        for line in procs[0].stdout:  # process 0 reports the steps
            if line.startswith("step") and int(line.split()[1]) >= 5:
                break
        procs[1].send_signal(signal.SIGTERM)
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for code, _, err in results:
        assert code == 143, err[-3000:]
    saved = sorted(int(d.name) for d in (tmp_path / "run" / "checkpoints").iterdir() if d.name.isdigit())
    assert len(saved) == 1 and 5 <= saved[0] < 2000, saved  # one step, written by both together
    assert f"stopped by SIGTERM at step {saved[0]}" in results[0][2]
    _, _, meta = load_run(tmp_path / "run")
    assert meta["step"] == saved[0]
