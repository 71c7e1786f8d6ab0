"""The training loop: open a run, run its steps, finish it. ``train(run)`` is ``arlm train``.

Everything numeric lives in step.py (the jitted step) and optim.py; the run folder's files in
run_dir.py; the metrics and wall-clock bookkeeping in metrics.py. This file orders the side
effects: data, steps, metrics fetched every ``log_every`` steps, validation, checkpoints,
resume, the final report and sample. A family with its own fitting step (``Family.fit``, e.g.
n-gram counts) is fitted instead of trained, then evaluated, saved and sampled the same way.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import jax
import jax.numpy as jnp
import tiktoken
from jax.sharding import Mesh
from orbax.checkpoint import multihost

from arlm_jax.analysis.memory import check_state_fits
from arlm_jax.checkpoint import Checkpointer
from arlm_jax.config import RunConfig, to_dict
from arlm_jax.data import batches as batch_lib, tokens as data_lib
from arlm_jax.data.tokenizer import decode, encode, eot_id, load_tokenizer, tokenizer_identity
from arlm_jax.decode.generate import generate
from arlm_jax.decode.sampling import Sampler
from arlm_jax.errors import ConfigError, ResourceError
from arlm_jax.files import atomic_write_text
from arlm_jax.models import family_of
from arlm_jax.parallel.hosts import global_batch, process_rows, to_host
from arlm_jax.parallel.mesh import mesh_of
from arlm_jax.train.evaluate import EvalSet
from arlm_jax.train.lock import run_lock
from arlm_jax.train.metrics import LoopClock, StepMetrics, TrainingDiverged  # noqa: F401 (TrainingDiverged: the CLI's)
from arlm_jax.train.optim import make_optimizer
from arlm_jax.train.run_dir import (abstract_state, append_jsonl, check_resumable, load_init_params,
                                    plot_losses, truncate_jsonl)
from arlm_jax.train.step import (TrainState, init_sharded_state, make_eval_step, make_train_step,
                                 state_from_params)
from arlm_jax.train.stop import Interrupted, StopRequests, stop_requests


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    val: dict  # loss (mean NLL), ppl, bpb, accuracy of the final validation
    sample: str  # the sample printed at the end ("" when sample_tokens is 0)
    start_step: int  # 0, or the step a --resume continued from
    run: RunConfig  # the run as trained: for a family that fits, its model config holds the fitted sizes


@dataclasses.dataclass
class OpenRun:
    """A run ready to step: its config, data, mesh, compiled steps, checkpointer and state."""

    run: RunConfig
    enc: tiktoken.Encoding
    data: data_lib.TokenData
    mesh: Mesh
    ck: Checkpointer
    train_step: Callable | None  # None for a family that fits (its params are fitted by open_run)
    eval_step: Callable
    optimizer: Any
    state: TrainState
    start: int
    metrics_path: Path
    say: Callable[[str], None]
    lead: bool  # process 0: prints and writes the run folder's files
    meta: Callable[[int], dict]  # checkpoint meta of a step
    val: EvalSet  # the validation windows, gathered once
    stop: StopRequests = dataclasses.field(default_factory=StopRequests)  # SIGTERM / SIGINT seen
    t0: float = dataclasses.field(default_factory=time.perf_counter)  # when the run was opened

    def elapsed(self) -> float:
        """Seconds since this process opened the run (logged as ``elapsed_s``)."""
        return round(time.perf_counter() - self.t0, 3)

    def validate(self, state: TrainState) -> dict:
        return self.val.score(self.eval_step, state.params)

    def log(self, rows: list[dict]) -> None:
        if self.lead:
            try:
                append_jsonl(self.metrics_path, rows)
            except OSError as err:
                raise ResourceError(f"metrics: cannot append to {self.metrics_path} ({err.strerror or err}); "
                                    f"the earlier checkpoints are intact; free space, then --resume") from None


def _load_data(run: RunConfig, enc: tiktoken.Encoding, say) -> data_lib.TokenData:
    if run.model.vocab_size < enc.n_vocab:
        raise ConfigError(f"model.vocab_size={run.model.vocab_size} is smaller than the tokenizer's "
                          f"{enc.n_vocab} ids; set model.vocab_size >= {enc.n_vocab}")
    t0 = time.perf_counter()
    data = data_lib.build_token_cache(run.data, enc)
    if data.note:
        say(f"data: {data.note}")
    data_lib.check_ids_below(data, run.model.vocab_size)
    batch_lib.check_window(len(data.train), run.seq_len, "train")
    batch_lib.check_window(len(data.val), run.seq_len, "validation")
    say(f"data: {len(data.train):,} train / {len(data.val):,} val tokens "
        f"({data.n_train_docs} / {data.n_val_docs} documents, {time.perf_counter() - t0:.1f}s)")
    return data


def open_run(run: RunConfig, *, resume: bool = False, out: TextIO | None = None,
             enc: tiktoken.Encoding | None = None, stop: StopRequests | None = None,
             resume_step: int | None = None) -> OpenRun:
    """Validate ``run``, load its data, compile its steps, and restore (``resume``) or create
    its state; config.json is written and metrics.jsonl cut back to the restored step.

    A resume restores the newest intact checkpoint (or ``resume_step``): a corrupt newer one
    is reported and moved aside, never deleted (checkpoint.py)."""
    t0 = time.perf_counter()
    run.validate()
    lead = jax.process_index() == 0
    out = out or sys.stdout
    say = (lambda msg: print(msg, file=out, flush=True)) if lead else (lambda msg: None)  # noqa: E731
    mesh = mesh_of(run.mesh)
    enc = enc or load_tokenizer(run.data.tokenizer)
    tok_id = tokenizer_identity(enc)
    fit = family_of(run.model).fit
    fitted = None
    if fit is None:
        optimizer = make_optimizer(run.train, run.model)
        # built first: they check the mesh against the model's shapes and the batch size
        train_step = make_train_step(run.model, run.train, optimizer, mesh=mesh)
        eval_step = make_eval_step(run.model, mesh=mesh)
        data = _load_data(run, enc, say)
    else:  # the fit sets the table sizes, so the steps are built from the fitted config
        data = _load_data(run, enc, say)
        run, fitted = _fit(run, fit, data, say)
        optimizer, train_step = make_optimizer(run.train, run.model), None
        eval_step = make_eval_step(run.model, mesh=mesh)
    tc = run.train
    say(f"model: {family_of(run.model).describe(run.model)}")

    run_dir = Path(tc.out_dir)
    ck = Checkpointer(run_dir, tc.keep_checkpoints)
    try:
        state = _restore_or_init(run, ck, mesh, optimizer, tok_id, say, resume, resume_step, fitted)
        start = int(state.step)
        metrics_path = _prepare_folder(run, start, lead, say)
        val = EvalSet.build(data.val, tc.batch_size, run.seq_len, tc.eval_batches, data.bytes_per_token, mesh)
    except BaseException:
        ck.close(quiet=True)  # no orbax thread outlives a failed open
        raise

    def meta(step: int) -> dict:
        return {"step": step, "data": {"seed": tc.seed, "next_batch": step}, "config": to_dict(run),
                "tokenizer": tok_id}
    return OpenRun(run=run, enc=enc, data=data, mesh=mesh, ck=ck, train_step=train_step,
                   eval_step=eval_step, optimizer=optimizer, state=state, start=start,
                   metrics_path=metrics_path, say=say, lead=lead, meta=meta, val=val,
                   stop=stop or StopRequests(), t0=t0)


def _fit(run: RunConfig, fit: Callable, data: data_lib.TokenData, say: Callable) -> tuple[RunConfig, Any]:
    """The family's own fitting step on the training tokens: (the run with the fitted model
    config, the fitted params). Deterministic, so a resumed run refits to the same tables."""
    t0 = time.perf_counter()
    fitted = fit(run.model, data.train, run.train)
    if fitted.note:
        say(f"fit: {fitted.note}")
    say(f"fitted {run.model.family} on {len(data.train):,} tokens in {time.perf_counter() - t0:.1f}s")
    return dataclasses.replace(run, model=fitted.cfg).validate(), fitted.params


def _restore_or_init(run: RunConfig, ck: Checkpointer, mesh: Mesh, optimizer: Any, tok_id: str,
                     say: Callable, resume: bool, resume_step: int | None, fitted: Any = None) -> TrainState:
    """The newest intact checkpoint's state (or ``resume_step``'s) when resuming, else a new one
    (of the ``fitted`` params, for a family that fits); the state is checked to fit in device
    memory before anything is allocated."""
    tc = run.train
    latest = ck.latest_step()
    if latest is not None and not resume:
        raise ConfigError(f"train.out_dir={tc.out_dir!r} already holds checkpoints (newest step {latest}); "
                          f"pass --resume to continue that run or choose another train.out_dir")
    if resume_step is not None and latest is None:
        raise ConfigError(f"--resume-step {resume_step}: no checkpoint in {ck.directory}")
    abstract = abstract_state(run, mesh)
    check_state_fits(abstract, mesh)
    if latest is None:
        if resume:
            say(f"--resume: no checkpoint in {ck.directory}; starting at step 0")
        if fitted is not None:
            params = jax.device_put(fitted, jax.tree.map(lambda a: a.sharding, abstract.params))
            return state_from_params(params, run.model, optimizer, mesh)
        if tc.init_from:
            params, meta = load_init_params(run, abstract.params, tok_id)
            say(f"initialised from step {meta['step']} of {tc.init_from}"
                + (f" (converted from {meta['converted_from']})" if meta.get("converted_from") else ""))
            return state_from_params(params, run.model, optimizer, mesh)
        return init_sharded_state(jax.random.key(tc.seed), run.model, optimizer, mesh)

    def check(saved: dict) -> None:
        if saved.get("converted_from"):
            raise ConfigError(f"train.out_dir={tc.out_dir!r} holds a converted model ({saved['converted_from']}), "
                              f"not a training run; fine-tune it with --init-from {tc.out_dir} and a new "
                              f"train.out_dir")
        check_resumable(saved["config"], run, saved["tokenizer"], tok_id, str(ck.directory))
    state, saved, notes = ck.restore_newest(abstract, resume_step, check)  # onto this mesh
    for note in notes:
        say(f"--resume: {note}")
    say(f"resumed from step {saved['step']} in {ck.directory}")
    return state


def _prepare_folder(run: RunConfig, start: int, lead: bool, say: Callable) -> Path:
    """Write config.json and cut metrics.jsonl back to ``start`` (process 0); -> its path."""
    run_dir = Path(run.train.out_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if lead:
        atomic_write_text(run_dir / "config.json", json.dumps(to_dict(run), indent=1) + "\n")
        if start == 0:
            metrics_path.unlink(missing_ok=True)
        elif bad := truncate_jsonl(metrics_path, start):
            say(f"{metrics_path}: dropped {bad} line(s) that were not whole JSON rows (a torn write)")
    return metrics_path


def run_steps(r: OpenRun) -> TrainState:
    """Step from ``r.start`` to ``train.steps``: validation every ``eval_every`` steps and a
    checkpoint every ``ckpt_every`` (and at the end). On SIGTERM or SIGINT (``r.stop``, checked
    at every step) the current step is saved, every queued save finished, and ``Interrupted``
    raised (stop.py).

    The host never waits for the device between fetches: each step is dispatched
    asynchronously, the next batch is gathered and sent while it runs, metrics stay on the
    device until ``log_every``, and checkpoints are written in the background (checkpoint.py)."""
    tc, seq, state, step = r.run.train, r.run.seq_len, r.state, r.start
    rows = process_rows(tc.batch_size, r.mesh)
    metrics, clock = StepMetrics(r), LoopClock()

    def batch_at(i: int) -> dict:
        local = batch_lib.get_batch(r.data.train, tc.batch_size, seq, tc.seed, i, rows=rows)
        return {"tokens": global_batch(local, tc.batch_size, r.mesh)}

    def save(st: TrainState, at: int) -> None:
        clock.timed("ckpt", r.ck.save, at, st, r.meta(at))
        metrics.last_saved = at

    try:
        batch = batch_at(step) if step < tc.steps else None
        while step < tc.steps:
            state, m = r.train_step(state, batch)
            step += 1
            if step < tc.steps:
                batch = batch_at(step)  # while the step runs
            if clock.start is None:
                clock.first_done(m)
            metrics.pending.append((step, m))
            if step % tc.ckpt_every == 0 or step % tc.eval_every == 0 or step == tc.steps:
                metrics.flush()  # all of them: a checkpoint is never of a diverged state
            elif step % tc.log_every == 0:
                metrics.flush(all_steps=False)
            if step % tc.eval_every == 0 and step < tc.steps:
                val = clock.timed("eval", r.validate, state)
                r.log([{"split": "val", "step": step, **val, "elapsed_s": r.elapsed()}])
            if step % tc.ckpt_every == 0 or step == tc.steps:
                save(state, step)
            if r.stop.should_stop(step):
                metrics.flush()
                if step > metrics.last_saved:
                    save(state, step)
                r.ck.wait()
                metrics.bar.close()
                raise Interrupted(f"stopped by {r.stop.name()} at step {step}: checkpoint saved in "
                                  f"{r.ck.directory}; --resume continues", r.stop.signum)
    except Interrupted:
        raise
    except BaseException:
        metrics.bar.close()
        r.ck.wait()  # let earlier saves finish: they are the run's good checkpoints
        raise
    metrics.bar.close()
    if line := clock.report(step - r.start - 1, tc.batch_size * seq):
        r.say(line)
    return state


def run_fit(r: OpenRun) -> TrainState:
    """For a family with its own fitting step (``Family.fit``, run by ``open_run``): its params
    saved as the final step, in place of the optimizer's steps."""
    tc = r.run.train
    if r.start >= tc.steps:
        return r.state
    state = r.state.replace(step=jnp.asarray(tc.steps, jnp.int32))
    r.ck.save(tc.steps, state, r.meta(tc.steps))
    return state


def finish(r: OpenRun, state: TrainState) -> TrainResult:
    """Wait for the checkpoints, validate, plot, and print a sample (train.sample_*)."""
    r.ck.wait()
    r.ck.close()
    tc, cfg, step = r.run.train, r.run.model, int(state.step)
    if r.stop.signum is not None:  # came during the last save: it is on disk, the report is not needed
        raise Interrupted(f"stopped by {r.stop.name()} after the last step ({step}); its checkpoint is "
                          f"saved in {r.ck.directory}", r.stop.signum)
    final = r.validate(state)
    r.log([{"split": "val", "step": step, **final, "elapsed_s": r.elapsed()}])
    r.say(f"validation at step {step}: loss {final['loss']:.4f}  perplexity {final['ppl']:.2f}  "
          f"bits/byte {final['bpb']:.3f}  accuracy {final['accuracy']:.3f}")
    if r.lead:
        r.say(plot_losses(r.metrics_path, r.metrics_path.parent / "loss.png"))
    sample = ""
    if tc.sample_tokens:
        ctx = family_of(cfg).context_len(cfg)
        prompt = encode(r.enc, tc.sample_prompt) or [eot_id(r.enc)]
        if ctx is not None:
            prompt = prompt[-ctx:]  # past the context the window slides (decode/window.py)
        greedy = tc.sample_temperature == 0.0
        sampler = None if greedy else Sampler(temperature=tc.sample_temperature, top_p=tc.sample_top_p)
        end = eot_id(r.enc)  # the sample ends where a document would
        with jax.set_mesh(r.mesh):  # the params stay where they are; the state follows them
            gen = generate(state.params, cfg, [prompt], jax.random.key(tc.seed), max_new_tokens=tc.sample_tokens,
                           sampler=sampler, stop=[[end]])
        tokens, length = to_host(gen.tokens)[0], int(to_host(gen.lengths)[0])
        sample = tc.sample_prompt + decode(r.enc, [t for t in tokens[:length].tolist() if t != end])
        how = "greedy" if greedy else f"temperature {tc.sample_temperature:g}, top-p {tc.sample_top_p:g}"
        r.say(f"sample ({how}):\n{sample}")
    return TrainResult(state=state, val=final, sample=sample, start_step=r.start, run=r.run)


def train(run: RunConfig, *, resume: bool = False, out: TextIO | None = None,
          enc: tiktoken.Encoding | None = None, resume_step: int | None = None) -> TrainResult:
    """Train ``run`` (resuming from its out_dir's newest intact checkpoint when ``resume``, or
    from ``resume_step``, whose newer checkpoints are moved aside); reports go
    to ``out`` (default stdout), the progress bar to stderr. ``enc`` is ``run.data.tokenizer``
    already loaded, if the caller has it.

    The run is laid out on ``run.mesh`` (parallel/). With several processes (after
    ``jax.distributed.initialize``; see parallel/distributed.py) every process runs this same
    function: each loads only its rows of each batch, all write the checkpoints together, and
    process 0 alone prints and writes config.json, metrics.jsonl and the plot.

    The run folder has one owner (lock.py): process 0 holds its lock throughout. SIGTERM and
    SIGINT stop the run at the next step boundary after saving it (stop.py)."""
    run.validate()
    with run_lock(run.train.out_dir, enabled=jax.process_index() == 0), \
            stop_requests(jax.process_count() > 1, multihost.reached_preemption) as stop:
        r = open_run(run, resume=resume or resume_step is not None, out=out, enc=enc, stop=stop,
                     resume_step=resume_step)
        try:
            state = run_steps(r) if r.train_step is not None else run_fit(r)
            return finish(r, state)
        finally:
            r.ck.close(quiet=True)  # on every path: no orbax thread outlives the run
