"""The `arlm` command's persistent compilation cache (cli/compile_cache.py): where it goes, when
it stays off, and that a run whose programs come from the cache computes what the run that
compiled them computed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from arlm_jax.cli import compile_cache


@pytest.fixture
def jax_cache_settings():
    """The jax settings ``enable`` changes, put back afterwards (nothing compiles in between)."""
    keys = ("jax_compilation_cache_dir", "jax_compilation_cache_max_size")
    before = {k: jax.config.values[k] for k in keys}
    yield
    for k, v in before.items():
        jax.config.update(k, v)


def test_the_default_folder_is_under_arlms_cache(tmp_path, jax_cache_settings):
    got = compile_cache.enable({"ARLM_CACHE": str(tmp_path)})
    assert got == str(tmp_path / "xla") and (tmp_path / "xla").is_dir()
    assert jax.config.values["jax_compilation_cache_dir"] == got
    assert jax.config.values["jax_compilation_cache_max_size"] == compile_cache.MAX_BYTES
    assert compile_cache.default_dir({}) == Path.home() / ".cache" / "arlm_jax" / "xla"


def test_the_environment_chooses_first(tmp_path, jax_cache_settings):
    before = jax.config.values["jax_compilation_cache_dir"]
    assert compile_cache.enable({"JAX_COMPILATION_CACHE_DIR": "", "ARLM_CACHE": str(tmp_path)}) is None
    assert compile_cache.enable({"JAX_COMPILATION_CACHE_DIR": "/elsewhere"}) == "/elsewhere"
    assert jax.config.values["jax_compilation_cache_dir"] == before  # jax read the variable itself
    assert not (tmp_path / "xla").exists()
    compile_cache.enable({"ARLM_CACHE": str(tmp_path), "JAX_COMPILATION_CACHE_MAX_SIZE": "100"})
    assert jax.config.values["jax_compilation_cache_max_size"] != compile_cache.MAX_BYTES


def test_a_folder_that_cannot_be_made_means_no_cache(tmp_path, jax_cache_settings):
    before = jax.config.values["jax_compilation_cache_dir"]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert compile_cache.enable({"ARLM_CACHE": str(blocker)}) is None
    assert jax.config.values["jax_compilation_cache_dir"] == before


def test_a_run_from_cached_programs_equals_the_run_that_compiled_them(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j} - {i}\n" for j in range(50)))
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env |= {"ARLM_CACHE": str(tmp_path / "cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    xla = tmp_path / "cache" / "xla"

    def train(name):
        argv = [sys.executable, "-m", "arlm_jax.cli", "train", "--preset", "tiny", "--data.corpus", str(corpus),
                "--train.out_dir", str(tmp_path / name), "--train.steps", "6", "--train.batch_size", "4",
                "--train.eval_every", "3", "--train.eval_batches", "2", "--train.log_every", "1",
                "--train.progress", "false", "--train.sample_tokens", "0", "--mesh.devices", "1"]
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: r[k] for k in ("split", "step", "loss")} for r in rows]

    compiled = train("first")
    entries = sorted(p.name for p in xla.iterdir())
    assert any(name.startswith("jit_") for name in entries), entries  # the programs were stored
    assert train("second") == compiled  # bit-identical losses, train and validation
    assert sorted(p.name for p in xla.iterdir()) == entries  # every program came from the cache
