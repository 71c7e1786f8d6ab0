"""The `arlm` command end to end, and every bad-input case as a one-line error."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from arlm_jax.cli import main as cli
from arlm_jax import ModelConfig
from arlm_jax.config import DataConfig, TrainConfig


def arlm(*argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, needle):
    assert code == 2, err
    assert err.startswith("arlm: error: ") and err.count("\n") == 1, err
    assert needle in err, err


TINY = ["--preset", "tiny", "--train.batch_size", "4", "--train.eval_batches", "2",
        "--train.progress", "false", "--train.warmup_steps", "2", "--train.sample_tokens", "8", "--mesh.devices", "1"]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(5):
        (root / f"m{i}.py").write_text("".join(f"def g{j}(y):\n    return y * {j}\n" for j in range(50)))
    return root


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for section, cls in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):
        for f in dataclasses.fields(cls):
            assert f"--{section}.{f.name}" in out
    undocumented = [f.name for c in (ModelConfig, TrainConfig, DataConfig) for f in dataclasses.fields(c)
                    if not cli._field_help(c).get(f.name)]
    assert not undocumented, undocumented


def test_train_eval_info_end_to_end(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    code, out, err = arlm("train", *TINY, "--data.corpus", corpus, "--train.out_dir", run,
                          "--train.steps", "6", "--train.ckpt_every", "3", "--model.n_layers", "1",
                          "--train.sample_prompt", "def", capsys=capsys)
    assert code == 0, err
    assert "perplexity" in out and "greedy sample:\ndef" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["n_layers"] == 1 and cfg["model"]["vocab_size"] == 257 and cfg["preset"] == "tiny"
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val"} and rows[-1]["step"] == 6
    assert "tokens_per_s" in [r for r in rows if r["split"] == "train"][-1]

    code, out, err = arlm("eval", run, "--json", "--batches", "2", capsys=capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["step"] == 6 and res["ppl"] > 1 and res["bpb"] > 0
    code, out, _ = arlm("eval", run, "--step", "3", capsys=capsys)
    assert code == 0 and out.startswith("step 3 on")
    # restored onto a 4-device mesh and scored there: the same figures
    code, out, err = arlm("eval", run, "--json", "--batches", "2", "--mesh.fsdp", "2", "--mesh.data", "2",
                          "--mesh.devices", "4", capsys=capsys)
    assert code == 0, err
    sharded = json.loads(out)
    for k in ("loss", "ppl", "bpb", "accuracy"):
        np.testing.assert_allclose(sharded[k], res[k], rtol=1e-5)
    code, _, err = arlm("eval", run, "--batch-size", "6", "--mesh.fsdp", "4", "--mesh.devices", "4",
                        capsys=capsys)
    one_line_error(code, err, "--batch-size=6 must be divisible by")

    # the saved config.json is a valid --config file and reproduces the run's options
    code, out, err = arlm("info", "--config", run / "config.json", capsys=capsys)
    assert code == 0 and "preset tiny" in out and "1 layers" in out


def test_config_file_then_flags(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('preset = "gpt2-124m"\n[model]\nn_layers = 3\n[train]\nlr = 1e-3\n')
    code, out, _ = arlm("info", "--config", tmp_path / "c.toml", "--model.d_model", "384", capsys=capsys)
    assert code == 0 and "3 layers, d_model 384" in out and "vocab 50257" in out
    code, out, _ = arlm("info", "--preset", "llama-7b", capsys=capsys)
    assert code == 0 and "6,738" in out


def test_tokenizer_train_command(tmp_path, corpus, capsys):
    out_path = tmp_path / "tok.tiktoken"
    code, out, err = arlm("tokenizer", "train", "--vocab-size", "300", "--corpus", corpus, "--out",
                          out_path, capsys=capsys)
    assert code == 0, err
    assert "trained a 300-token BPE" in out and out_path.exists()
    code, out, err = arlm("train", *TINY, "--data.corpus", corpus, "--data.tokenizer", out_path,
                          "--train.out_dir", tmp_path / "r", "--train.steps", "2", capsys=capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["vocab_size"] == 300


@pytest.mark.parametrize("argv,needle", [
    (["train", "--preset", "gpt5"], "preset='gpt5' is unknown for model.family='transformer'; choose one of tiny, demo"),
    (["train", "--model.nlayers", "3"], "unknown option '--model.nlayers' (did you mean --model.n_layers?)"),
    (["train", "--model.n_layers", "x"], "argument --model.n_layers: 'x' is not an int"),
    (["train", "--model.d_model", "30"], "model.d_model=30 must be divisible by model.n_heads=4"),
    (["train", "--model.n_kv_heads", "3"], "model.n_heads=4 must be divisible by model.n_kv_heads=3"),
    (["train", "--model.n_layers", "0"], "model.n_layers=0 must be > 0"),
    (["train", "--train.lr", "0"], "train.lr=0.0 must be > 0"),
    (["train", "--train.lr=-1e-3"], "train.lr=-0.001 must be > 0"),
    (["train", "--train.progress", "maybe"], "argument --train.progress: 'maybe' is not true or false"),
    (["train", "--model.pos", "fourier"], "model.pos='fourier' is not allowed; choose one of learned"),
    (["train", "--data.tokenizer", "gpt9"], "data.tokenizer='gpt9' is unknown; choose byte, gpt2"),
    (["train", "--config", "/nonexistent.json"], "--config='/nonexistent.json' cannot be read"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["eval", "/nonexistent/run"], "is missing or unreadable; give the out_dir of a training run"),
    (["eval", "/nonexistent/run", "--batches", "0"], "--batches=0 must be > 0"),
    (["tokenizer", "train", "--vocab-size", "100"], "vocab_size=100 must be >= 257"),
    (["train", "--mesh.fsdp", "0"], "mesh.fsdp=0 must be a positive size or -1"),
    (["train", "--mesh.data", "-1"], "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1"),
    (["train", "--mesh.data", "3", "--mesh.fsdp", "1"],  # conftest simulates 8 devices
     "data=3 x fsdp=1 x tensor=1 = 3 devices, but there are 8"),
    (["train", "--mesh.tensor", "8"], "=4) is not divisible by mesh axis tensor=8"),
    (["train", "--train.batch_size", "12"], "train.batch_size=12 must be divisible by data=1 x fsdp=8"),
    (["train", "--num-processes", "2", "--process-id", "5", "--coordinator", "127.0.0.1:9"],
     "process_id=5 must be in 0..1"),
])
def test_bad_input_is_one_line(argv, needle, capsys):
    code, _, err = arlm(*argv, capsys=capsys)
    one_line_error(code, err, needle)


def test_bad_corpus_inputs(tmp_path, corpus, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "short.txt").write_text("hi\n")
    base = ["train", *TINY, "--train.out_dir", tmp_path / "r"]
    one_line_error(*arlm(*base, "--data.corpus", tmp_path / "missing.txt", capsys=capsys)[::2],
                   "no such file, folder or glob match")
    one_line_error(*arlm(*base, "--data.corpus", tmp_path / "empty", capsys=capsys)[::2], "holds no text")
    one_line_error(*arlm(*base, "--data.corpus", tmp_path / "short.txt", capsys=capsys)[::2],
                   "fewer than one window")
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())


def test_corrupt_checkpoint_and_mismatched_resume(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    base = ["train", *TINY, "--data.corpus", corpus, "--train.out_dir", run, "--train.steps", "4",
            "--train.ckpt_every", "2"]
    assert arlm(*base, capsys=capsys)[0] == 0
    one_line_error(*arlm(*base, "--resume", "--model.n_heads", "2", capsys=capsys)[::2],
                   "--resume: model.n_heads=2 does not match the checkpoint's 4")
    one_line_error(*arlm(*base, capsys=capsys)[::2], "already holds checkpoints (newest step 4)")
    for f in (run / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    one_line_error(*arlm("eval", run, capsys=capsys)[::2], "step 4 in")
    one_line_error(*arlm(*base, "--resume", capsys=capsys)[::2], "is unreadable or corrupt")
    code, out, _ = arlm("eval", run, "--step", "2", capsys=capsys)  # the older one is intact
    assert code == 0 and out.startswith("step 2 on")
    one_line_error(*arlm("eval", run, "--step", "7", capsys=capsys)[::2], "step=7 is not saved")


def test_console_script_runs(tmp_path):
    """`python -m arlm_jax.cli` as a fresh process: exit status and stderr of a bad input."""
    env = dict(os.environ, ARLM_CACHE=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "arlm_jax.cli", "train", "--model.n_heads", "5"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("arlm: error: model.d_model=128 must be divisible")
