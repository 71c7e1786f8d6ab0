"""The `arlm` command end to end, and every bad-input case as a one-line error."""

import ast
import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from arlm_jax.cli import main as cli
from arlm_jax.cli.options import build_run
from arlm_jax import ModelConfig
from arlm_jax.config import DataConfig, MeshConfig, TrainConfig
from arlm_jax.models import families, get_family


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


def attribute_docs(cls) -> dict[str, str]:
    """Each field's PEP 257 attribute docstring (the string literal on the line after it)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: " ".join(b.value.value.split()) for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value.value, str)}


def help_text(*argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # one line: help wraps at the terminal width


def shown(value) -> str:
    return "null" if value is None else str(value)


def test_help_documents_every_option(capsys):
    """Every field of every section: its option, its docstring, its type and its default (the
    chosen preset's, for the model section)."""
    out = help_text("train", "--preset", "tiny", capsys=capsys)
    for section, cfg in (("model", ModelConfig.tiny()), ("train", TrainConfig()), ("data", DataConfig()),
                         ("mesh", MeshConfig())):
        docs = attribute_docs(type(cfg))
        for f in dataclasses.fields(cfg):
            assert docs.get(f.name), f"{section}.{f.name} has no attribute docstring"
            default = " ".join(shown(getattr(cfg, f.name)).split())
            pattern = (rf"--{section}\.{f.name} \S+ {re.escape(docs[f.name])} "
                       rf"\(type: [^()]+, default: {re.escape(default)} ?\)")
            assert re.search(pattern, out), (section, f.name, pattern)
    assert "default: 32)" in out and "gpt2-124m" in out  # tiny's d_model; the presets are listed
    for option in ("--resume", "--coordinator", "--num-processes", "--process-id", "--distributed-timeout",
                   "--distributed", "--preset", "--config"):
        assert option in out


def test_help_of_another_family_lists_its_own_fields(capsys):
    for family in families():
        fam = get_family(family)
        out = help_text("info", "--model.family", family, capsys=capsys)
        mine = {f.name for f in dataclasses.fields(fam.config)}
        others = {f.name for g in families() for f in dataclasses.fields(get_family(g).config)} - mine
        assert all(f"--model.{name} " in out for name in mine)
        assert not [name for name in others if f"--model.{name} " in out]
        assert f"model preset of model.family={family}: {', '.join(fam.presets)}" in out


def parsed(*argv):
    """The RunConfig a command line builds, and the options it sets explicitly."""
    _, args, source = cli.parse(["info", *map(str, argv)])
    return build_run(args, source)


def test_values_are_read_as_typed():
    run, explicit = parsed("--preset", "tiny", "--train.sample_prompt", "def ", "--model.n_kv_heads", "none",
                           "--model.bias", "false", "--model.tie_embeddings=FALSE", "--train.progress", "0",
                           "--model.d_ff", "null", "--train.seq_len", "16")
    assert run.train.sample_prompt == "def " and run.model.n_kv_heads is None and run.model.d_ff is None
    assert run.model.bias is False and run.model.tie_embeddings is False and run.train.progress is False
    assert run.train.seq_len == 16 and {"model.bias", "train.seq_len"} <= explicit
    assert "model.vocab_size" not in explicit
    run, _ = parsed("--model.bias", "True", "--train.progress", "1", "--train.sample_prompt", "none",
                    "--model.n_kv_heads", "2")
    assert run.model.bias is True and run.train.progress is True and run.train.sample_prompt == "none"
    assert run.model.n_kv_heads == 2 and run.preset == "demo"


def test_family_and_its_presets():
    run, _ = parsed("--model.family", "bigram", "--preset", "tiny", "--model.decay", "0.25")
    fam = get_family("bigram")
    assert type(run.model) is fam.config and run.model.decay == 0.25
    assert run.model == dataclasses.replace(fam.preset("tiny"), decay=0.25)
    run, _ = parsed("--model.family", "bigram")
    assert run.preset == fam.default_preset and run.model == fam.preset(fam.default_preset)


def test_train_eval_info_end_to_end(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    code, out, err = arlm("train", *TINY, "--data.corpus", corpus, "--train.out_dir", run,
                          "--train.steps", "6", "--train.ckpt_every", "3", "--model.n_layers", "1",
                          "--train.sample_prompt", "def", capsys=capsys)
    assert code == 0, err
    assert "perplexity" in out and "sample (temperature 0.8, top-p 0.95):\ndef" in out
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


def test_config_files_toml_and_json(tmp_path):
    (tmp_path / "c.toml").write_text('preset = "tiny"\n[model]\nn_layers = 3\nbias = false\n'
                                     '[train]\nlr = 1\nsample_prompt = "def "\n[mesh]\nfsdp = 2\n')
    run, explicit = parsed("--config", tmp_path / "c.toml", "--train.lr", "0.5")
    assert run.preset == "tiny" and run.model.d_model == ModelConfig.tiny().d_model  # the file's preset
    assert run.model.n_layers == 3 and run.model.bias is False and run.mesh.fsdp == 2
    assert run.train.lr == 0.5 and run.train.sample_prompt == "def "  # flags override the file
    assert {"model.n_layers", "train.lr", "mesh.fsdp"} <= explicit
    (tmp_path / "c.json").write_text(json.dumps({"model": {"family": "bigram", "d_model": 8},
                                                 "train": {"seq_len": None, "steps": 7}}))
    run, explicit = parsed("--config", tmp_path / "c.json", "--preset", "tiny")
    assert run.model == dataclasses.replace(get_family("bigram").preset("tiny"), d_model=8)
    assert run.train.steps == 7 and run.train.seq_len is None and "model.vocab_size" not in explicit


@pytest.mark.parametrize("text, needle", [
    ('{"model": {"n_layers": 2,}}', "is not valid JSON: "),
    ("[model\n", "is not valid TOML: "),
    ('{"modle": {}}', "modle is not a config section; choose from preset, model, train, data, mesh"),
    ('{"model": {"nlayers": 2}}', "model.nlayers is not an option (did you mean model.n_layers?); the options "
                                  "of model.family='transformer' are family, vocab_size, n_layers"),
    ('{"model": {"n_layers": "x"}}', "model.n_layers='x' is not an int"),
    ('{"train": {"progress": "maybe"}}', "train.progress='maybe' is not true or false"),
    ('{"model": {"family": "bigram", "n_heads": 4}}', "model.n_heads is not an option: model.family='bigram' "
                                                      "has no n_heads (model.family transformer has)"),
    ('{"model": {"family": "mamba"}}', "model.family='mamba' is unknown; choose one of"),
    ('[1, 2]', "holds no sections"),
])
def test_bad_config_file_is_one_line(tmp_path, text, needle, capsys):
    path = tmp_path / ("c.toml" if "TOML" in needle else "c.json")
    path.write_text(text)
    one_line_error(*arlm("info", "--config", path, capsys=capsys)[::2], needle)


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
    (["train", "--model.matmul_dtype", "float16"],
     "model.matmul_dtype='float16' is not allowed; choose one of auto, float32, bfloat16"),
    (["train", "--data.tokenizer", "gpt9"], "data.tokenizer='gpt9' is unknown; choose byte, gpt2"),
    (["train", "--config", "/nonexistent.json"], "--config='/nonexistent.json' cannot be read"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "expected \"command\" to be one of"),
    (["train", "--model.n_kv_heads", "x"], "argument --model.n_kv_heads: 'x' is not an int or none"),
    (["train", "--model.bias", "2"], "argument --model.bias: '2' is not true or false"),
    (["train", "--num-processes", "two"], "argument --num-processes: 'two' is not an int"),
    (["train", "--train.lr"], "argument --train.lr: expected one argument"),
    (["train", "--model.n_lay", "3"], "unknown option '--model.n_lay' (did you mean --model.n_layers?)"),
    (["train", "--resum"], "unknown option '--resum' (did you mean --resume?)"),
    (["train", "--train.warmup", "3"], "unknown option '--train.warmup' (did you mean --train.warmup_steps?); "
                                       "train options are steps, batch_size"),
    (["train", "surplus"], "unexpected argument 'surplus'"),
    (["train", "--model.family", "bigram", "--model.n_heads", "4"],
     "unknown option '--model.n_heads': model.family='bigram' has no n_heads (model.family transformer has); "
     "the options of model.family='bigram' are family, vocab_size, d_model, decay, dtype, init_std"),
    (["info", "--model.family", "mamba"], "model.family='mamba' is unknown; choose one of " + ", ".join(families())),
    (["info", "--model.family", "bigram", "--preset", "gpt2-124m"],
     "preset='gpt2-124m' is unknown for model.family='bigram'; choose one of tiny, demo"),
    (["eval", "/r", "--model.n_layers", "2"], "unknown option '--model.n_layers'"),
    (["eval", "/r", "--split", "test"], "argument --split: invalid choice: 'test' (choose from 'val', 'train')"),
    (["eval"], "the following arguments are required: run_dir"),
    (["tokenizer", "train", "--vocab-size", "300", "--pattern", "o200k"], "invalid choice: 'o200k'"),
    (["tokenizer", "train"], "the following arguments are required: --vocab-size"),
    (["eval", "/nonexistent/run"], "no checkpoints folder in '/nonexistent/run'; give the out_dir of a training run"),
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
    code, out, _ = arlm("eval", run, "--step", "2", capsys=capsys)  # the older one is intact
    assert code == 0 and out.startswith("step 2 on")
    code, out, err = arlm(*base, "--resume", capsys=capsys)  # falls back to it, keeping the bad one
    assert code == 0, err
    assert "--resume: skipped checkpoint: step 4" in out and "resumed from step 2" in out, out
    assert (run / "set_aside" / "4.corrupt" / "state").is_dir()
    one_line_error(*arlm("eval", run, "--step", "7", capsys=capsys)[::2], "step=7 is not saved")


def test_console_script_runs(tmp_path):
    """`python -m arlm_jax.cli` as a fresh process: exit status and stderr of a bad input."""
    env = dict(os.environ, ARLM_CACHE=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "arlm_jax.cli", "train", "--model.n_heads", "5"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("arlm: error: model.d_model=128 must be divisible")
