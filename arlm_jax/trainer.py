"""The training loop: data, jitted steps, validation, logging, checkpoints, resume, sample.

``train(run)`` is what ``arlm train`` calls. Everything numeric lives in ``train.py``; this
file orders the side effects. A run folder (``run.train.out_dir``) holds:
  config.json     the resolved RunConfig
  metrics.jsonl   one JSON object per logged train step ({"split": "train", ...}) and per
                  validation ({"split": "val", ...}); a resumed run drops rows past its start
  checkpoints/    orbax steps (see ``checkpoint.py``)
  loss.png        train and validation loss curves (needs matplotlib)
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import TextIO

import jax
import numpy as np
import tiktoken
from jax.sharding import Mesh

from arlm_jax import data as data_lib
from arlm_jax.checkpoint import CheckpointError, Checkpointer
from arlm_jax.config import ConfigError, RunConfig, from_dict, to_dict
from arlm_jax.flops import flops_per_token, peak_flops
from arlm_jax.generate import generate
from arlm_jax.loss import bits_per_byte, perplexity
from arlm_jax.tokenizer import decode, encode, eot_id, load_tokenizer, tokenizer_identity
from arlm_jax.sharding import abstract_with_shardings, global_batch, mesh_of, process_rows, to_host
from arlm_jax.train import (TrainState, init_sharded_state, init_state, make_eval_step, make_optimizer,
                            make_train_step)

# Fields that may change between a run and its --resume: they steer logging and saving,
# not the trajectory. Any other difference would make the resumed losses differ.
RESUMABLE_CHANGES = frozenset({"train.eval_every", "train.eval_batches", "train.log_every",
                               "train.ckpt_every", "train.keep_checkpoints", "train.out_dir",
                               "train.progress", "train.sample_prompt", "train.sample_tokens",
                               "data.cache_dir", "mesh.data", "mesh.fsdp", "mesh.tensor",
                               "mesh.devices"})  # a run may resume on another mesh


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN or infinite; earlier checkpoints are intact."""


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    val: dict  # loss (mean NLL), ppl, bpb, accuracy of the final validation
    sample: str  # the greedy sample ("" when sample_tokens is 0)
    start_step: int  # 0, or the step a --resume continued from


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(saved: dict, run: RunConfig, saved_tokenizer: str, tokenizer: str,
                    where: str) -> None:
    """ConfigError naming the first option that differs from the checkpoint's run."""
    old, new = _flatten(saved), _flatten(to_dict(run))
    for name in sorted(set(old) | set(new)):
        if name not in RESUMABLE_CHANGES and old.get(name) != new.get(name):
            raise ConfigError(f"--resume: {name}={new.get(name)!r} does not match the checkpoint's "
                              f"{old.get(name)!r} in {where}; use the same value or another train.out_dir")
    if saved_tokenizer != tokenizer:
        raise ConfigError(f"--resume: data.tokenizer is {tokenizer} but the checkpoint in {where} "
                          f"was trained with {saved_tokenizer}")


def evaluate(eval_step, params: dict, tokens: np.ndarray, batch_size: int, seq_len: int,
             n_batches: int, bytes_per_token: float, mesh: Mesh | None = None) -> dict:
    """Mean NLL, perplexity, bits per byte and accuracy over fixed windows of ``tokens``.

    With a ``mesh`` (and ``make_eval_step(cfg, mesh=mesh)``) each process loads only its rows.
    """
    nll = correct = n = 0.0
    rows = None if mesh is None else process_rows(batch_size, mesh)
    for batch in data_lib.eval_batches(tokens, batch_size, seq_len, n_batches, rows=rows):
        if mesh is not None:
            batch = global_batch(batch, batch_size, mesh)
        m = jax.device_get(eval_step(params, {"tokens": batch}))
        nll, correct, n = nll + float(m["nll_sum"]), correct + float(m["correct"]), n + float(m["tokens"])
    loss = nll / max(n, 1.0)
    return {"loss": loss, "ppl": perplexity(loss), "bpb": bits_per_byte(loss, bytes_per_token),
            "accuracy": correct / max(n, 1.0)}


def _append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` by a run that died before its next checkpoint."""
    if path.exists():
        rows = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= last_step]
        path.write_text("".join(r + "\n" for r in rows))


def plot_losses(metrics_path: Path, out: Path) -> str:
    """Write the loss curves as a PNG; returns a note for the user."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "loss plot skipped: matplotlib is not installed (pip install 'arlm_jax[plot]')"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split in ("train", "val"):
        pts = [(r["step"], r["loss"]) for r in rows if r["split"] == split]
        if pts:
            ax.plot(*zip(*pts), marker="o" if split == "val" else None, label=split)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=metrics_path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"loss curve: {out}"


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                file=sys.stderr)


def train(run: RunConfig, *, resume: bool = False, out: TextIO | None = None,
          enc: tiktoken.Encoding | None = None) -> TrainResult:
    """Train ``run`` (resuming from its out_dir's newest checkpoint when ``resume``); reports go
    to ``out`` (default stdout), the progress bar to stderr. ``enc`` is ``run.data.tokenizer``
    already loaded, if the caller has it.

    The run is laid out on ``run.mesh`` (sharding.py). With several processes (after
    ``jax.distributed.initialize``; see ``distributed.py``) every process runs this same
    function: each loads only its rows of each batch, all write the checkpoints together, and
    process 0 alone prints and writes config.json, metrics.jsonl and the plot."""
    run.validate()
    tc, cfg, seq = run.train, run.model, run.seq_len
    lead = jax.process_index() == 0
    out = out or sys.stdout
    say = (lambda msg: print(msg, file=out, flush=True)) if lead else (lambda msg: None)  # noqa: E731
    mesh = mesh_of(run.mesh)
    optimizer = make_optimizer(tc)
    # built first: they check the mesh against the model's shapes and the batch size
    train_step = make_train_step(cfg, tc, optimizer, mesh=mesh)
    eval_step = make_eval_step(cfg, mesh=mesh)
    enc = enc or load_tokenizer(run.data.tokenizer)
    if cfg.vocab_size < enc.n_vocab:
        raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                          f"{enc.n_vocab} ids; set model.vocab_size >= {enc.n_vocab}")
    tok_id = tokenizer_identity(enc)
    t0 = time.perf_counter()
    data = data_lib.build_token_cache(run.data, enc)
    data_lib.check_window(len(data.train), seq, "train")
    data_lib.check_window(len(data.val), seq, "validation")
    say(f"data: {len(data.train):,} train / {len(data.val):,} val tokens "
        f"({data.n_train_docs} / {data.n_val_docs} documents, {time.perf_counter() - t0:.1f}s)")

    run_dir = Path(tc.out_dir)
    key = jax.random.key(tc.seed)
    ck = Checkpointer(run_dir, tc.keep_checkpoints)
    latest = ck.latest_step()
    if latest is not None and not resume:
        raise ConfigError(f"train.out_dir={tc.out_dir!r} already holds checkpoints (newest step {latest}); "
                          f"pass --resume to continue that run or choose another train.out_dir")
    if latest is not None:
        meta = ck.read_meta(latest)
        check_resumable(meta["config"], run, meta["tokenizer"], tok_id, str(ck.directory))
        abstract = jax.eval_shape(lambda: init_state(key, cfg, optimizer))
        state, _ = ck.restore(abstract_with_shardings(abstract, mesh), latest)  # onto this mesh
        say(f"resumed from step {latest} in {ck.directory}")
    else:
        if resume:
            say(f"--resume: no checkpoint in {ck.directory}; starting at step 0")
        state = init_sharded_state(key, cfg, optimizer, mesh)
    start = int(state.step)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    if lead:
        (run_dir / "config.json").write_text(json.dumps(to_dict(run), indent=1) + "\n")
        if start == 0:
            metrics_path.unlink(missing_ok=True)
        else:
            _truncate_jsonl(metrics_path, start)

    rows = process_rows(tc.batch_size, mesh)
    val = lambda st: evaluate(eval_step, st.params, data.val, tc.batch_size, seq,  # noqa: E731
                              tc.eval_batches, data.bytes_per_token, mesh)
    fpt, (peak, _) = flops_per_token(cfg, seq), peak_flops(cfg.dtype)
    tokens_per_step = tc.batch_size * seq

    def meta_of(step: int) -> dict:
        return {"step": step, "data": {"seed": tc.seed, "next_batch": step}, "config": to_dict(run),
                "tokenizer": tok_id}

    pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet fetched
    last_saved = start
    clock = [time.perf_counter(), start]  # time and step of the last flush

    def flush(bar) -> None:
        """Fetch pending metrics: NaN check, progress bar, JSONL."""
        if not pending:
            return
        rows = []
        for s, m in jax.device_get(pending):
            row = {"split": "train", "step": s, **{k: float(v) for k, v in m.items()}}
            if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
                where = f"step {last_saved} in {ck.directory}" if last_saved else "none was saved yet"
                raise TrainingDiverged(
                    f"train: loss={row['loss']} grad_norm={row['grad_norm']} at step {s}; stopped. "
                    f"The last good checkpoint is intact ({where}); lower train.lr or raise "
                    f"train.warmup_steps")
            rows.append(row)
        pending.clear()
        now = time.perf_counter()
        tps = tokens_per_step * (rows[-1]["step"] - clock[1]) / max(now - clock[0], 1e-9)
        clock[:] = [now, rows[-1]["step"]]
        rows[-1] |= {"tokens_per_s": tps, "mfu": fpt * tps / peak / mesh.devices.size}
        if lead:
            _append_jsonl(metrics_path, rows)
        bar.update(rows[-1]["step"] - bar.n)
        bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}", tok_s=f"{tps:,.0f}",
                        mfu=f"{100 * rows[-1]['mfu']:.1f}%", refresh=False)
        if not bar.disable:
            return
        say(f"step {rows[-1]['step']:>6}  loss {rows[-1]['loss']:.4f}  {tps:,.0f} tok/s")

    def save(st: TrainState, step: int) -> None:
        nonlocal last_saved
        ck.save(step, st, meta_of(step))
        last_saved = step

    bar = _progress(tc.steps, start, tc.progress)
    step = start
    try:
        while step < tc.steps:
            local = data_lib.get_batch(data.train, tc.batch_size, seq, tc.seed, step, rows=rows)
            batch = {"tokens": global_batch(local, tc.batch_size, mesh)}
            state, m = train_step(state, batch)
            step += 1
            pending.append((step, m))
            if step % tc.log_every == 0 or step % tc.ckpt_every == 0 or step % tc.eval_every == 0 \
                    or step == tc.steps:
                flush(bar)
            if step % tc.eval_every == 0 and step < tc.steps:
                row = {"split": "val", "step": step, **val(state)}
                if lead:
                    _append_jsonl(metrics_path, [row])
            if step % tc.ckpt_every == 0 or step == tc.steps:
                save(state, step)
    except KeyboardInterrupt:
        flush(bar)
        if step > last_saved:
            save(state, step)
        ck.wait()
        bar.close()
        say(f"interrupted at step {step}: checkpoint saved in {ck.directory}; --resume continues")
        raise
    except BaseException:
        bar.close()
        ck.wait()  # let earlier saves finish: they are the run's good checkpoints
        raise
    bar.close()
    ck.wait()
    ck.close()

    final = val(state)
    if lead:
        _append_jsonl(metrics_path, [{"split": "val", "step": step, **final}])
    say(f"validation at step {step}: loss {final['loss']:.4f}  perplexity {final['ppl']:.2f}  "
        f"bits/byte {final['bpb']:.3f}  accuracy {final['accuracy']:.3f}")
    if lead:
        say(plot_losses(metrics_path, run_dir / "loss.png"))
    sample = ""
    if tc.sample_tokens:
        prompt = (encode(enc, tc.sample_prompt) or [eot_id(enc)])[-(cfg.max_len - 1):]
        n = min(tc.sample_tokens, cfg.max_len - len(prompt) + 1)  # what the context has room for
        with jax.set_mesh(mesh):  # the params stay where they are; the cache follows them
            gen = generate(state.params, cfg, [prompt], jax.random.key(0), max_new_tokens=n)
        tokens, length = to_host(gen.tokens)[0], int(to_host(gen.lengths)[0])
        sample = tc.sample_prompt + decode(enc, tokens[:length].tolist())
        say(f"greedy sample:\n{sample}")
    return TrainResult(state=state, val=final, sample=sample, start_step=start)


def load_run(run_dir: str | Path, step: int | None = None, mesh=None) -> tuple[RunConfig, dict, dict]:
    """(config, params, meta) of a training run's checkpoint (default: the newest).

    With a ``mesh`` every array is restored straight into its place on it (the rule table's
    layout, whatever mesh saved it); without one, onto the default device."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    try:
        run = from_dict(json.loads(cfg_path.read_text())).validate()
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint: {str(cfg_path)!r} is missing or unreadable; give the "
                              f"out_dir of a training run ({type(err).__name__})") from err
    optimizer = make_optimizer(run.train)
    abstract = jax.eval_shape(lambda: init_state(jax.random.key(0), run.model, optimizer))
    if mesh is not None:
        abstract = abstract_with_shardings(abstract, mesh)
    with Checkpointer(run_dir, read_only=True) as ck:
        state, meta = ck.restore(abstract, step)
    return run, state.params, meta
