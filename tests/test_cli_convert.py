"""``arlm convert`` both ways, and a converted run through eval, generate, fine-tuning
(``arlm train --init-from``) and back to ``transformers``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import arlm_jax as A
from arlm_jax.cli import main as cli
from arlm_jax.train.run_dir import load_run

torch.set_num_threads(1)


def arlm(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """A tiny random GPT-2 with a 400-token byte-level BPE tokenizer.json trained on a corpus."""
    root = tmp_path_factory.mktemp("conv")
    corpus = root / "corpus"
    corpus.mkdir()
    text = "".join(f"def f{i}(x):\n    return x * {i} + 'é{i}'\n\n" for i in range(400))
    (corpus / "a.py").write_text(text)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                     initializer_range=0.1, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(root / "hf")
    tok.save(str(root / "hf" / "tokenizer.json"))
    return root, corpus, model, tok


def test_from_hf_run_evaluates_generates_fine_tunes_and_exports(hf_gpt2, capsys):
    root, corpus, model, tok = hf_gpt2
    run = root / "run"
    assert arlm("convert", "--from-hf", root / "hf", "--out", run) == 0
    assert (run / "tokenizer.tiktoken").is_file() and (run / "hf_tokenizer" / "tokenizer.json").is_file()
    cfg, params, meta = load_run(run)
    assert meta["converted_from"].startswith("hf:") and cfg.data.tokenizer == str((run / "tokenizer.tiktoken").resolve())

    # eval scores what HF's forward scores
    capsys.readouterr()
    assert arlm("eval", run, "--corpus", corpus, "--batches", 2, "--batch-size", 2, "--json") == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["loss"])

    # greedy generate from text prints what HF's greedy generate continues with
    prompt = "def f7(x):\n"
    ids = tok.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        theirs = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                pad_token_id=0, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    want = tok.decode(theirs[0].tolist(), skip_special_tokens=False)
    assert arlm("generate", "--checkpoint", run, "--prompt", prompt.replace("\n", "\\n"), "--max-new-tokens", 12,
                "--temperature", 0) == 0
    assert capsys.readouterr().out.rstrip("\n") == want.replace("<|endoftext|>", "").rstrip("\n")

    # fine-tuning starts from the converted params, with its model and tokenizer
    from arlm_jax.config import from_dict
    from arlm_jax.train.loop import open_run
    ft_cfg = dict(json.loads((run / "config.json").read_text()))
    ft_cfg["train"] |= {"init_from": str(run), "out_dir": str(root / "ft0"), "steps": 1}
    ft_cfg["data"] |= {"corpus": str(corpus)}
    ft_cfg["mesh"] |= {"devices": 1}
    opened = open_run(from_dict(ft_cfg).validate())
    try:
        for a, b in zip(jax.tree.leaves(opened.state.params), jax.tree.leaves(params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(opened.state.step) == 0
    finally:
        opened.ck.close()

    ft = root / "ft"
    assert arlm("train", "--init-from", run, "--train.out_dir", ft, "--data.corpus", corpus, "--train.steps", 4,
                "--train.batch_size", 2, "--train.eval_every", 4, "--train.sample_tokens", 0, "--mesh.devices", 1,
                "--train.progress", "false") == 0
    assert "initialised from step 0 of" in capsys.readouterr().out
    ft_run, ft_params, _ = load_run(ft)
    assert ft_run.model == cfg.model and ft_run.data.tokenizer == cfg.data.tokenizer
    assert not np.array_equal(np.asarray(ft_params["embed"]["tok"]), np.asarray(params["embed"]["tok"]))

    # and back to transformers: its logits are ours, and the tokenizer files come along
    assert arlm("convert", "--to-hf", ft, "--out", root / "back") == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(root / "back").eval()
    assert (root / "back" / "tokenizer.json").is_file()
    toks = np.random.default_rng(0).integers(0, 400, (2, 16))
    with torch.no_grad():
        hf = back(torch.tensor(toks)).logits.numpy()
    ours = np.asarray(A.forward(ft_params, jnp.asarray(toks, jnp.int32), ft_run.model)[0])
    np.testing.assert_allclose(hf, ours, atol=1e-5, rtol=0)


def test_bad_conversions_exit_with_one_line(hf_gpt2, tmp_path, capsys):
    root, corpus, _, _ = hf_gpt2
    capsys.readouterr()
    cases = [
        (["convert", "--from-hf", tmp_path, "--out", tmp_path / "r"], "has no config.json"),
        (["convert", "--from-hf", root / "hf", "--out", root / "hf"], "is not an empty folder"),
        (["convert", "--from-hf", root / "hf", "--out", tmp_path / "r2", "--tokenizer", "byte"], None),
        (["convert", "--to-hf", tmp_path / "nothing", "--out", tmp_path / "o"], "no checkpoints folder"),
    ]
    for argv, message in cases:
        code = arlm(*argv)
        err = capsys.readouterr().err
        if message is None:
            assert code == 0, err
            continue
        assert code == 2 and message in err and err.count("\n") == 1, err

    # fine-tuning keeps the source's shapes and tokenizer
    ft = ["train", "--init-from", tmp_path / "r2", "--data.corpus", corpus, "--train.out_dir", tmp_path / "ft",
          "--mesh.devices", 1, "--train.steps", 1]
    from arlm_jax.data.tokenizer import byte_encoding, save_tiktoken
    other = byte_encoding()
    other.name = "other-bytes"  # the same ids under another name: another tokenizer identity
    save_tiktoken(other, tmp_path / "other.tiktoken")
    for extra, message in ((["--model.d_model", 64], "model.d_model=64 builds other parameters than its 32"),
                           (["--data.tokenizer", tmp_path / "other.tiktoken"], "was made with tokenizer byte-"),
                           (["--model.family", "lstm"], f"but --init-from={str(tmp_path / 'r2')!r} holds a model of "
                                                        f"family 'transformer'"),
                           ([], None)):
        code = arlm(*ft, *extra, "--model.dropout", 0.2) if message is None else arlm(*ft, *extra)
        err = capsys.readouterr().err
        if message is None:  # dropout changes no shape
            assert code == 0, err
        else:
            assert code == 2 and message in err and err.count("\n") == 1, err

    # a recurrent run has no HF architecture; a converted run is not resumable
    lstm = tmp_path / "lstm"
    assert arlm("train", "--model.family", "lstm", "--preset", "tiny", "--data.corpus", corpus, "--train.steps", 1,
                "--train.batch_size", 2, "--train.seq_len", 16, "--train.sample_tokens", 0, "--mesh.devices", 1,
                "--train.out_dir", lstm, "--train.progress", "false") == 0
    capsys.readouterr()
    assert arlm("convert", "--to-hf", lstm, "--out", tmp_path / "o2") == 2
    err = capsys.readouterr().err
    assert "model.family='lstm' has no Hugging Face architecture" in err and err.count("\n") == 1
    assert not (tmp_path / "o2").exists()
    assert arlm("train", "--config", tmp_path / "r2" / "config.json", "--resume", "--data.corpus", corpus,
                "--mesh.devices", 1) == 2
    assert "holds a converted model" in capsys.readouterr().err


def test_conversion_needs_no_torch(hf_gpt2, tmp_path):
    """Both directions run in a process where torch, transformers and tokenizers cannot import."""
    import subprocess
    import sys
    root = hf_gpt2[0]
    code = ("import sys\n"
            "for m in ('torch', 'transformers', 'tokenizers'): sys.modules[m] = None\n"
            "from arlm_jax.cli.main import main\n"
            f"assert main(['convert', '--from-hf', {str(root / 'hf')!r}, '--out', {str(tmp_path / 'run')!r}]) == 0\n"
            f"assert main(['convert', '--to-hf', {str(tmp_path / 'run')!r}, '--out', {str(tmp_path / 'back')!r}]) == 0\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "back" / "model.safetensors").is_file() and (tmp_path / "back" / "tokenizer.json").is_file()
