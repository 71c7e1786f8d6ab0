"""`arlm plan`: ahead-of-time compile on simulated devices; its FLOP count against a slow twin."""

import dataclasses
import json

import jax
import pytest

from arlm_jax.analysis import plan as plan_lib
from arlm_jax.config import MeshConfig, RunConfig, TrainConfig
from arlm_jax.analysis.flops import param_count
from arlm_jax.models.transformer.model import init
from conftest import tiny
from test_cli import arlm, one_line_error


def test_plan_counts_every_layer_and_sizes_the_shards(capsys):
    code, out, err = arlm("plan", "--preset", "tiny", "--model.n_layers", "3", "--model.n_heads", "8",
                          "--model.d_model", "64", "--model.vocab_size", "128", "--devices", "8",
                          "--mesh.data", "2", "--mesh.fsdp", "2", "--mesh.tensor", "2",
                          "--train.batch_size", "8", "--train.optimizer", "adamw", "--decode-batch", "4",
                          "--decode-len", "16", "--json", capsys=capsys)
    assert code == 0, err
    p = json.loads(out)
    assert p["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and p["devices"] == 8
    run = RunConfig(preset="tiny", model=tiny(n_layers=3, n_heads=8, d_model=64, vocab_size=128),
                    train=TrainConfig(batch_size=8, optimizer="adamw"), mesh=MeshConfig(data=2, fsdp=2, tensor=2))
    # slow twin of the scan correction: the same step with all layers unrolled, counted whole
    unrolled = dataclasses.replace(run, model=dataclasses.replace(run.model, scan_unroll=3))
    mesh = plan_lib.make_mesh(2, 2, 2, plan_lib.simulate_devices(8))
    whole = plan_lib._flops(plan_lib._train_program(unrolled, mesh)[0])
    assert p["train"]["flops"] == pytest.approx(whole, rel=0.02)  # 0.95% apart when written
    # and it is the analytic count's order: 3 x forward (6N per token) / 8 devices, plus attention
    n = param_count(jax.eval_shape(lambda: init(jax.random.key(0), run.model)))
    assert 0.8 < p["train"]["flops"] / (6 * n * 8 * run.seq_len / 8) < 2.0
    # parameters: every matmul weight split 4 ways (fsdp x tensor), norms and biases whole
    assert n * 4 / 4 * 0.9 < p["train"]["params"] <= n * 4 / 4 * 1.1
    assert p["train"]["opt_state"] == pytest.approx(2 * p["train"]["params"], rel=0.01)  # AdamW
    kv = run.model.n_layers * 2 * 4 * run.model.kv_heads * 16 * run.model.head_dim * 4
    # rows over data x fsdp, heads over tensor; plus the int32 lengths, one row per device
    assert p["decode"]["kv_cache"] == kv // 8 + 4
    for part in ("train", "decode"):
        m = p[part]
        assert m["temporaries"] > 0 and m["flops"] > 0
        assert m["peak"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
    assert all(f == {"train": True, "decode": True} for f in p["fits"].values())
    table = plan_lib.format_plan(p)
    assert "fits (peak <= memory per chip)" in table and "h100" in table and "fsdp=2" in table


def test_plan_counts_every_time_step_of_a_recurrent_model(capsys):
    """XLA counts the time scan's body once; the correction (one and two steps per iteration)
    brings the LSTM's count to the analytic 6 x matmul weights per token, within 10%."""
    from arlm_jax.analysis.flops import flops_per_token
    from arlm_jax.models.rnn import RecurrentConfig

    code, out, err = arlm("plan", "--model.family", "lstm", "--model.vocab_size", "256", "--model.d_embed", "128",
                          "--model.d_hidden", "128", "--train.batch_size", "8", "--train.seq_len", "32",
                          "--train.optimizer", "adamw", "--devices", "1", "--json", capsys=capsys)
    assert code == 0, err
    cfg = RecurrentConfig(family="lstm", vocab_size=256, d_embed=128, d_hidden=128).validate()
    analytic = flops_per_token(cfg) * 8 * 32
    run = RunConfig(model=cfg, train=TrainConfig(batch_size=8, seq_len=32, optimizer="adamw"))
    once = plan_lib._flops(plan_lib._train_program(run, plan_lib.make_mesh(1, 1, 1, plan_lib.simulate_devices(1)))[0])
    assert 1.0 <= json.loads(out)["train"]["flops"] / analytic < 1.1  # 1.03 when written
    assert once / analytic < 0.8  # uncorrected: 0.73


@pytest.mark.parametrize("argv, needle", [
    (["--devices", "16"], "already started with 8"),
    (["--devices", "8", "--mesh.tensor", "8"], "is not divisible by mesh axis tensor=8"),
    (["--devices", "8", "--train.batch_size", "4"], "train.batch_size=4 must be divisible by"),
    (["--mesh.fsdp", "-1"], "give --devices N"),
    (["--devices", "8", "--decode-len", "999"], "decode_len=999 must be in 1..model.max_len=32"),
])
def test_plan_bad_input(argv, needle, capsys):
    code, _, err = arlm("plan", "--preset", "tiny", "--train.batch_size", "8", *argv, capsys=capsys)
    one_line_error(code, err, needle)
