"""Scaling sweeps: planning on IsoFLOP curves, shards, and the runner's skip, resume and table.

The sweeps are tiny (widths 16..32, a few dozen steps) on a small corpus, so the file runs in
about a minute; the fits have their own file (test_scaling_fit.py).
"""

import csv
import dataclasses
import json
import signal

import numpy as np
import pytest

from arlm_jax.cli.main import main
from arlm_jax.config import DataConfig, MeshConfig, RunConfig, TrainConfig
from arlm_jax.errors import ConfigError
from arlm_jax.models import family_of
from arlm_jax.models.transformer.config import TransformerConfig
from arlm_jax.scaling import runner
from arlm_jax.scaling import sweep as sweep_lib
from arlm_jax.train.stop import Interrupted, StopRequests

LADDER = sweep_lib.Ladder(widths=(16, 24, 32), aspect=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    folder = root / "corpus"
    folder.mkdir()
    for i in range(4):
        (folder / f"m{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j} - {i}\n" for j in range(80)))
    return root


def base_run(root, **train) -> RunConfig:
    model = dataclasses.replace(TransformerConfig.tiny(), vocab_size=257)
    tc = TrainConfig(batch_size=4, seq_len=16, eval_batches=2, ckpt_every=10, **train)
    data = DataConfig(corpus=str(root / "corpus"), cache_dir=str(root / "cache"))
    return RunConfig(preset="tiny", model=model, train=tc, data=data, mesh=MeshConfig(devices=1)).validate()


def test_plan_puts_runs_on_isoflop_curves_with_the_exact_flop_count(corpus):
    base = base_run(corpus)
    rungs = sweep_lib.ladder_rungs(base, LADDER)
    budget = 40 * 64 * rungs[-1].flops_per_token  # the largest model gets 40 steps
    sweep = sweep_lib.plan_sweep(base, [budget, 2 * budget], 3, LADDER)
    assert [r["budget"] for r in sweep["runs"]] == [budget] * 3 + [2 * budget] * 3
    for r in sweep["runs"]:
        cfg = sweep_lib.run_of(r, corpus).model
        assert (cfg.d_model, cfg.n_layers) == (r["width"], r["depth"])
        assert r["flops_per_token"] == family_of(cfg).flops_per_token(cfg, 16)  # the family's count, not 6N
        D, L = cfg.d_model, cfg.n_layers  # by hand: attention and MLP matmuls, the head, the scores
        assert r["flops_per_token"] == 6 * (L * 12 * D * D + D * 257) + 12 * L * D * 16 != 6 * r["params_total"]
        assert r["tokens"] == r["steps"] * 64
        assert abs(r["flops"] / r["budget"] - 1) <= 0.5 / r["steps"] + 1e-12  # whole steps only
        # both counts recorded: the lookup tables are the token and position embeddings
        assert r["params_total"] - r["params_non_embedding"] == (257 + cfg.max_len) * cfg.d_model
        assert r["params"] == r["params_total"] and sweep["param_count"] == "total"
        assert r["config"]["train"]["eval_every"] == r["steps"] and r["config"]["train"]["sample_tokens"] == 0
    non = sweep_lib.plan_sweep(base, [budget], 3, LADDER, count="non-embedding")
    assert all(r["params"] == r["params_non_embedding"] for r in non["runs"])


def test_plan_centres_each_budget_on_its_target_ratio(corpus):
    base = base_run(corpus)
    ladder = sweep_lib.Ladder(widths=(16, 24, 32, 40, 48, 64), aspect=16)
    rungs = sweep_lib.ladder_rungs(base, ladder)
    mid = rungs[3]  # make the fourth rung's tokens/param exactly 20
    budget = 20 * mid.params_total * mid.flops_per_token
    sweep = sweep_lib.plan_sweep(base, [budget], 3, ladder, tokens_per_param=20.0, min_steps=1)
    assert [r["width"] for r in sweep["runs"]] == [rungs[2].width, mid.width, rungs[4].width]
    assert sweep["notes"] == []


@pytest.mark.parametrize("kwargs, needle", [
    ({"budgets": [1e3]}, "trains the smallest model"),
    ({"budgets": []}, "--budgets is empty"),
    ({"budgets": [-1.0]}, "must all be positive"),
    ({"budgets": [1e9, 1e9]}, "repeats a budget"),
    ({"sizes": 2}, "--sizes 2 must be >= 3"),
    ({"count": "embedding"}, "choose one of total, non-embedding"),
])
def test_bad_plans_are_one_line(corpus, kwargs, needle):
    args = {"budgets": [1e9], "sizes": 3, **kwargs}
    with pytest.raises(ConfigError, match=needle) as err:
        sweep_lib.plan_sweep(base_run(corpus), args.pop("budgets"), args.pop("sizes"), LADDER, **args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_shards_are_disjoint_and_cover_the_sweep(n):
    runs = [{"name": f"r{i}"} for i in range(13)]
    parts = [[r["name"] for r in sweep_lib.shard_of(runs, (i, n))] for i in range(n)]
    names = [x for part in parts for x in part]
    assert sorted(names) == sorted(r["name"] for r in runs) and len(set(names)) == len(names)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("text", ["3/3", "a/b", "1", "-1/2", "0/0"])
def test_bad_shards_are_one_line(text):
    with pytest.raises(ConfigError, match="--shard"):
        sweep_lib.parse_shard(text)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def planned(corpus, tmp_path_factory):
    """A planned 3-run sweep (one budget) and the steps of its runs."""
    base = base_run(corpus)
    rungs = sweep_lib.ladder_rungs(base, LADDER)
    sweep = sweep_lib.plan_sweep(base, [30 * 64 * rungs[-1].flops_per_token], 3, LADDER)
    return sweep


@pytest.fixture(scope="module")
def trained(planned, tmp_path_factory):
    """The planned sweep trained as two shards into the sweep's one table: (its folder, the
    runs each shard trained)."""
    folder = tmp_path_factory.mktemp("trained") / "sweep"
    path = sweep_lib.write_sweep(planned, folder)
    counts = [runner.run_sweep(path, shard=(i, 2)) for i in range(2)]
    return folder, counts


def test_shards_train_the_sweep_into_one_table_and_a_rerun_skips(planned, trained):
    folder, counts = trained
    assert [c["trained"] for c in counts] == [2, 1] and all(c["failed"] == 0 for c in counts)
    table = folder / "results.csv"
    rows = {r["name"]: r for r in _rows(table)}
    assert sorted(rows) == sorted(r["name"] for r in planned["runs"])
    for entry in planned["runs"]:
        row = rows[entry["name"]]
        assert int(row["params"]) == entry["params"] and int(row["tokens"]) == entry["tokens"]
        assert float(row["flops"]) == entry["flops"] and int(row["resumed_from"]) == 0
        assert 0 < float(row["loss"]) < np.log(257) and float(row["bpb"]) > 0 and float(row["wall_s"]) > 0
        saved = json.loads((folder / "runs" / entry["name"] / "result.json").read_text())
        assert saved["loss"] == float(row["loss"])
    # a second pass trains nothing and adds no rows
    assert runner.run_sweep(folder) == {"trained": 0, "skipped": 3, "failed": 0}
    assert len(_rows(table)) == 3
    # a table lost (or a process killed between result.json and its row) is completed from the runs
    table.unlink()
    assert runner.run_sweep(folder)["skipped"] == 3
    assert sorted(r["name"] for r in _rows(table)) == sorted(rows)
    with pytest.raises(ConfigError, match="already exists"):
        sweep_lib.write_sweep(planned, folder)


def test_a_failed_run_is_recorded_skipped_and_retried_on_request(planned, tmp_path, monkeypatch):
    """A run that diverges gets failed.json and no row; the sweep goes on; later passes skip it
    until --retry-failed, which trains it and clears the record. Training is stubbed: this
    is the runner's bookkeeping, and the stub's result stands in for a trained run's."""
    from arlm_jax.train.metrics import TrainingDiverged
    import arlm_jax.train.loop as loop
    bad = planned["runs"][1]["name"]

    def fake_train(run, *, resume, out, enc):
        if run.train.out_dir.endswith(bad) and not getattr(fake_train, "healed", False):
            raise TrainingDiverged("loss=nan at step 3; stopped (the checkpoint of step 2 is intact)")
        return dataclasses.make_dataclass("R", ["val", "start_step"])(
            {"loss": 2.0, "bpb": 2.9, "ppl": 7.4, "accuracy": 0.3, "tokens_per_s": 100.0}, 0)

    monkeypatch.setattr(loop, "train", fake_train)
    folder = tmp_path / "sweep"
    sweep_lib.write_sweep(planned, folder)
    assert runner.run_sweep(folder) == {"trained": 2, "skipped": 0, "failed": 1}
    failed = json.loads((folder / "runs" / bad / "failed.json").read_text())
    assert "loss=nan at step 3" in failed["error"]
    assert bad not in {r["name"] for r in _rows(folder / "results.csv")}
    assert runner.run_sweep(folder) == {"trained": 0, "skipped": 2, "failed": 1}
    fake_train.healed = True
    assert runner.run_sweep(folder, retry_failed=True) == {"trained": 1, "skipped": 2, "failed": 0}
    assert not (folder / "runs" / bad / "failed.json").exists()
    assert sorted(r["name"] for r in _rows(folder / "results.csv")) == sorted(r["name"] for r in planned["runs"])


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(planned, trained, tmp_path, monkeypatch):
    one = {**planned, "runs": planned["runs"][:1]}
    expected = {r["name"]: r for r in _rows(trained[0] / "results.csv")}[one["runs"][0]["name"]]
    cut = sweep_lib.write_sweep(one, tmp_path / "cut")
    stop_at = 12

    def stop_once(self, step):  # a SIGTERM seen at step 12, as a preempted job would get
        if step == stop_at:
            self.signum = signal.SIGTERM
        return step == stop_at
    monkeypatch.setattr(StopRequests, "should_stop", stop_once)
    with pytest.raises(Interrupted):
        runner.run_sweep(cut)
    assert not (tmp_path / "cut" / "results.csv").exists()
    monkeypatch.undo()
    assert runner.run_sweep(cut)["trained"] == 1
    got = _rows(tmp_path / "cut" / "results.csv")[0]
    assert int(got["resumed_from"]) == stop_at
    assert float(got["loss"]) == pytest.approx(float(expected["loss"]), rel=1e-6)


def test_the_cli_plans_and_refuses_bad_input(corpus, tmp_path, capsys):
    common = ["--preset", "tiny", "--data.corpus", str(corpus / "corpus"), "--data.cache_dir", str(corpus / "cache"),
              "--train.batch_size", "4", "--train.seq_len", "16", "--mesh.devices", "1"]
    out = tmp_path / "cli"
    assert main(["scaling", "plan", "--budgets", "5e8,1e9", "--sizes", "3", "--widths", "16,24,32,40",
                 "--aspect", "16", "--out", str(out), *common]) == 0
    sweep, _ = sweep_lib.read_sweep(out)
    assert len(sweep["runs"]) == 6 and sweep["runs"][0]["config"]["model"]["vocab_size"] == 257
    assert "wrote" in capsys.readouterr().out
    for argv, needle in [
        (["scaling", "plan", "--budgets", "1e3", "--out", str(tmp_path / "x"), *common], "trains the smallest model"),
        (["scaling", "plan", "--budgets", "big", "--out", str(tmp_path / "x"), *common], "--budgets 'big'"),
        (["scaling", "plan", "--budgets", "1e9", "--ladder", "huge", *common], "--ladder 'huge' is unknown"),
        (["scaling", "plan", *common], "give --budgets"),
        (["scaling", "run", str(tmp_path / "none")], "cannot read the sweep file"),
        (["scaling", "run", str(out), "--shard", "2/2"], "--shard '2/2'"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err


def test_the_cli_fits_any_csv_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from arlm_jax.scaling.synthetic import CHINCHILLA, isoflop_points
    p = isoflop_points([6e18, 3e19, 1e20, 3e20], sizes=7, seed=3)
    table = tmp_path / "elsewhere.csv"
    with open(table, "w", newline="") as fh:  # a table from another tool: its own column order, no flops
        w = csv.writer(fh)
        w.writerow(["loss", "run", "tokens", "params"])
        w.writerows([loss, f"r{i}", t, n] for i, (n, t, loss) in enumerate(zip(p.params, p.tokens, p.loss)))
    assert main(["scaling", "fit", str(table), "--bootstrap", "50", "--budget", "1e22", "--plot", str(tmp_path / "png"),
                 "--out", str(tmp_path / "fit.json"), "--holdout", str(table)]) == 0
    res = json.loads(capsys.readouterr().out)
    law = res["approach3"]
    for name in ("E", "A", "B", "alpha", "beta"):
        assert law[name] > 0 and len(law["intervals"][name]) == 2
    assert abs(law["alpha"] - CHINCHILLA["alpha"]) < 0.05 and not any(k.startswith("_") for k in res)
    assert res["budget"]["approach3"]["tokens_per_param"] > 1
    assert len(res["holdout"]) == len(p) and max(abs(r["error"]) for r in res["holdout"]) < 0.05
    assert json.loads((tmp_path / "fit.json").read_text())["approach3"]["E"] == law["E"]
    assert sorted(x.rsplit("/", 1)[-1] for x in res["plots"]) == ["frontier.png", "isoflop.png", "optimal.png",
                                                                   "residuals.png"]
    bad = tmp_path / "bad.csv"
    bad.write_text("params,tokens\n1,2\n")
    assert main(["scaling", "fit", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no column(s) loss" in err and err.count("\n") == 1
    assert main(["scaling", "fit", str(table), "--bootstrap", "0", "--holdout", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert "none.csv does not exist" in err and err.count("\n") == 1


def test_a_mup_ladder_keeps_the_base_width_and_the_attention_scale(corpus):
    base = base_run(corpus)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, parametrization="mup", mup_base_width=16))
    rungs = sweep_lib.ladder_rungs(base, LADDER)
    assert [r.model.head_dim for r in rungs] == [8, 8, 8]  # heads grow, head_dim stays
    assert all(r.model.mup_base_width == 16 for r in rungs)
    assert [r.model.width_mult for r in rungs] == [1.0, 1.5, 2.0]
    assert all(r.model.attn_scale == pytest.approx(8 ** -0.5) for r in rungs)  # 1/sqrt(E) at every width
