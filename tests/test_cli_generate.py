"""`arlm generate` on a checkpoint: streaming, batches, beams, stop texts and bad input."""

import jax
import pytest

from arlm_jax.decode.generate import generate
from arlm_jax.data.tokenizer import decode, encode, load_tokenizer
from arlm_jax.train.run_dir import load_run
from test_cli import TINY, arlm, one_line_error


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    corpus = tmp / "c.txt"
    corpus.write_text("".join(f"def f{j}(x):\n    return x + {j}\n\n" for j in range(200)))
    mp = pytest.MonkeyPatch()
    mp.setenv("ARLM_CACHE", str(tmp / "cache"))
    from arlm_jax.cli import main as cli
    assert cli.main(["train", *TINY, "--data.corpus", str(corpus), "--train.out_dir", str(tmp / "run"),
                     "--train.steps", "30", "--train.lr", "3e-3", "--train.sample_tokens", "0"]) == 0
    yield tmp / "run"
    mp.undo()


def _greedy_text(run_dir, prompt, n, stop=None):
    run, params, _ = load_run(run_dir)
    enc = load_tokenizer(run.data.tokenizer)
    ids = encode(enc, prompt)
    out = generate(params, run.model, [ids], jax.random.key(0), max_new_tokens=n,
                   stop=[[enc.eot_token]] + (stop or []))
    return prompt + decode(enc, [t for t in out.tokens[0, :int(out.lengths[0])].tolist() if t != enc.eot_token])


def test_streamed_greedy_text_equals_the_library(run_dir, capsys):
    code, out, err = arlm("generate", "--checkpoint", run_dir, "--prompt", "def f1", "--temperature", "0",
                          "--max-new-tokens", "17", "--chunk", "4", capsys=capsys)
    assert code == 0, err
    assert out == _greedy_text(run_dir, "def f1", 17) + "\n"


def test_generation_past_the_context_streams_what_the_library_gives(run_dir, capsys):
    # tiny: context 32. 70 new tokens slide the window (a full row restarts from its last
    # window_keep tokens); a prompt longer than the context is cropped to its last 32 tokens.
    run, params, _ = load_run(run_dir)
    enc = load_tokenizer(run.data.tokenizer)
    prompt = "def f12(x):\n    return x + 12\n\ndef f13(x):\n"  # 40 tokens
    for keep in ("32", "9"):
        code, out, err = arlm("generate", "--checkpoint", run_dir, "--prompt", prompt.replace("\n", "\\n"),
                              "--temperature", "0", "--max-new-tokens", "70", "--window-keep", keep,
                              capsys=capsys)
        assert code == 0, err
        res = generate(params, run.model, [encode(enc, prompt)[-32:]], jax.random.key(0), max_new_tokens=70,
                       stop=[[enc.eot_token]], window_keep=int(keep))
        ids = [t for t in res.tokens[0, :int(res.lengths[0])].tolist() if t != enc.eot_token]
        assert len(ids) > 32  # it did go past the context
        assert out == prompt + decode(enc, ids) + "\n"


def test_stop_text_ends_the_stream(run_dir, capsys):
    new = _greedy_text(run_dir, "def f1", 20)[len("def f1"):]
    stop = new[2]  # a character the greedy continuation produces (byte tokenizer: one token)
    code, out, err = arlm("generate", "--checkpoint", run_dir, "--prompt", "def f1", "--temperature", "0",
                          "--max-new-tokens", "20", "--stop", stop, capsys=capsys)
    assert code == 0, err
    assert out == "def f1" + new[:new.index(stop) + 1] + "\n"


def test_batch_samples_and_beams(run_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("def f2\n\nreturn\n")
    code, out, err = arlm("generate", "--checkpoint", run_dir, "--prompts-file", prompts, "--num-samples", "2",
                          "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--min-p", "0.01",
                          "--repetition-penalty", "1.1", "--presence-penalty", "0.1",
                          "--frequency-penalty", "0.1", "--max-new-tokens", "12", "--seed", "3", capsys=capsys)
    assert code == 0, err
    for r in (1, 2):
        for s in (1, 2):
            assert f"--- prompt {r}, sample {s} ---" in out
    code, out, err = arlm("generate", "--checkpoint", run_dir, "--prompt", "def", "--beams", "3",
                          "--num-samples", "2", "--max-new-tokens", "8", capsys=capsys)
    assert code == 0, err
    assert "--- prompt 1, beam 1, score" in out and "--- prompt 1, beam 2, score" in out


@pytest.mark.parametrize("extra, needle", [
    (["--top-p", "1.5"], "sampler.top_p=1.5"),
    (["--top-k", "-2"], "sampler.top_k=-2"),
    (["--temperature", "-1"], "sampler.temperature=-1.0"),
    (["--max-new-tokens", "500", "--beams", "2"], "exceeds the context"),  # sampling slides its window
    (["--prompt", ""], "empty prompt"),
    (["--prompt", "x" * 40, "--beams", "2"], "longer than the context"),  # sampling crops it
    (["--window-keep", "0", "--max-new-tokens", "60"], "window_keep=0 must be an integer in 1..32"),
    (["--num-samples", "3", "--beams", "2"], "--num-samples=3"),
    (["--beams", "0"], "--beams=0 must be >= 1"),
])
def test_bad_generate_input_is_one_line(run_dir, extra, needle, capsys):
    args = ["generate", "--checkpoint", run_dir, "--prompt", "def"]
    if "--prompt" in extra:
        args = args[:3]
    code, _, err = arlm(*args, *extra, capsys=capsys)
    one_line_error(code, err, needle)


@pytest.mark.parametrize("extra, needle", [
    (["--prompt", "x", "--top-k", "many"], "argument --top-k: 'many' is not an int"),
    (["--prompt", "x", "--top-p", "high"], "argument --top-p: 'high' is not a float"),
    (["--prompt", "x", "--prompts-file", "p.txt"], "argument --prompts-file: not allowed with argument --prompt"),
    ([], "one of the arguments --prompt --prompts-file is required"),
    (["--prompt", "x", "--temprature", "0"], "unknown option '--temprature' (did you mean --temperature?)"),
    (["--prompt", "x", "--mesh.fsdp", "four"], "argument --mesh.fsdp: 'four' is not an int"),
])
def test_bad_generate_options_are_one_line(tmp_path, extra, needle, capsys):
    one_line_error(*arlm("generate", "--checkpoint", tmp_path, *extra, capsys=capsys)[::2], needle)


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = arlm("generate", "--checkpoint", tmp_path / "nope", "--prompt", "x", capsys=capsys)
    one_line_error(code, err, "nope")


@pytest.mark.parametrize("spec", [["--draft-checkpoint", "RUN", "--lookahead", "3"], ["--prompt-lookup", "2"]])
def test_speculative_greedy_prints_the_same_text(run_dir, spec, capsys):
    spec = [str(run_dir) if a == "RUN" else a for a in spec]
    code, out, err = arlm("generate", "--checkpoint", run_dir, "--prompt", "def f1", "--temperature", "0",
                          "--max-new-tokens", "12", *spec, capsys=capsys)
    assert code == 0, err
    assert out == _greedy_text(run_dir, "def f1", 12) + "\n"
    assert "acceptance rate" in err


def test_bad_lookahead_is_one_line(run_dir, capsys):
    code, _, err = arlm("generate", "--checkpoint", run_dir, "--prompt", "def", "--prompt-lookup", "2",
                        "--lookahead", "0", capsys=capsys)
    one_line_error(code, err, "k=0")


@pytest.mark.parametrize("mesh", [["--mesh.fsdp", "4", "--mesh.devices", "4"],
                                  ["--mesh.data", "2", "--mesh.fsdp", "-1"]])
def test_sharded_generate_prints_the_same_text(run_dir, tmp_path, mesh, capsys):
    """The checkpoint restored onto a mesh and decoded there: the streamed greedy text, and a
    sampled batch (4 rows, so every data x fsdp shard holds rows), equal the one-device output."""
    code, out, err = arlm("generate", "--checkpoint", run_dir, "--prompt", "def f1", "--temperature", "0",
                          "--max-new-tokens", "12", "--chunk", "4", *mesh, capsys=capsys)
    assert code == 0, err
    assert out == _greedy_text(run_dir, "def f1", 12) + "\n"
    prompts = tmp_path / "p.txt"
    prompts.write_text("def f2\nreturn\n")
    batch = ["generate", "--checkpoint", run_dir, "--prompts-file", prompts, "--num-samples", "2",
             "--temperature", "0.8", "--top-p", "0.9", "--max-new-tokens", "10", "--seed", "5"]
    code, want, err = arlm(*batch, capsys=capsys)
    assert code == 0, err
    code, got, err = arlm(*batch, *mesh, capsys=capsys)
    assert code == 0, err
    assert got == want


def test_load_run_onto_a_mesh_shards_the_weights(run_dir):
    from jax.sharding import PartitionSpec as P
    from arlm_jax.parallel.mesh import make_mesh
    mesh = make_mesh(1, 4, 1, jax.devices()[:4])
    _, params, _ = load_run(run_dir, mesh=mesh)
    wq = params["blocks"]["attn"]["wq"]  # [L, D, H, E]: D over fsdp, H over tensor (size 1)
    assert wq.sharding.spec == P(None, "fsdp", "tensor", None) and len(wq.sharding.device_set) == 4


@pytest.mark.parametrize("mesh, needle", [
    (["--mesh.tensor", "2"], "vocab=257) is not divisible by mesh axis tensor=2"),
    (["--mesh.data", "3", "--mesh.fsdp", "1"], "= 3 devices, but there are 8"),
    (["--mesh.fsdp", "0"], "mesh.fsdp=0"),
    (["--mesh.devices", "9"], "mesh.devices=9"),
])
def test_bad_generate_mesh_is_one_line(run_dir, mesh, needle, capsys):
    code, _, err = arlm("generate", "--checkpoint", run_dir, "--prompt", "def", *mesh, capsys=capsys)
    one_line_error(code, err, needle)
