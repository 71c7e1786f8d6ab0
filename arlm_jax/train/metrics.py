"""The loop's bookkeeping: train metrics kept on the device and fetched every few steps (NaN
check, progress bar, the metrics log), and where the stepping phase's wall clock goes."""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Callable

import jax

from arlm_jax.analysis.flops import flops_per_token, peak_flops

if TYPE_CHECKING:
    from arlm_jax.train.loop import OpenRun


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN or infinite; earlier checkpoints are intact."""


class StepMetrics:
    """Train metrics kept on the device and fetched in one transfer every few steps."""

    def __init__(self, r: "OpenRun"):
        self.r, self.pending, self.last_saved = r, [], r.start
        cfg, seq = r.run.model, r.run.seq_len
        self.fpt, (self.peak, _) = flops_per_token(cfg, seq), peak_flops(cfg.dtype)
        self.tokens_per_step = r.run.train.batch_size * seq
        self.clock = (time.perf_counter(), r.start)  # time and step of the last flush
        self.bar = _progress(r.run.train.steps, r.start, r.run.train.progress)

    def flush(self, *, all_steps: bool = True) -> None:
        """Fetch pending metrics: NaN check, progress bar, JSONL. ``all_steps=False`` leaves the
        newest step's metrics (its step may still be running) for the next flush, so the fetch
        never waits for the device and the device never waits for the host."""
        ready = self.pending if all_steps else self.pending[:-1]
        if not ready:
            return
        rows = []
        for s, m in jax.device_get(ready):
            row = {"split": "train", "step": s, **{k: float(v) for k, v in m.items()}}
            if not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])):
                where = f"step {self.last_saved} in {self.r.ck.directory}" if self.last_saved else "none was saved yet"
                raise TrainingDiverged(
                    f"train: loss={row['loss']} grad_norm={row['grad_norm']} at step {s}; stopped. "
                    f"The last good checkpoint is intact ({where}); lower train.lr or raise "
                    f"train.warmup_steps")
            rows.append(row)
        del self.pending[:len(ready)]
        now, last = time.perf_counter(), rows[-1]
        tps = self.tokens_per_step * (last["step"] - self.clock[1]) / max(now - self.clock[0], 1e-9)
        self.clock = (now, last["step"])
        last |= {"tokens_per_s": tps, "mfu": self.fpt * tps / self.peak / self.r.mesh.devices.size,
                 "elapsed_s": self.r.elapsed()}
        self.r.log(rows)
        self.bar.update(last["step"] - self.bar.n)
        self.bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{tps:,.0f}",
                             mfu=f"{100 * last['mfu']:.1f}%", refresh=False)
        if self.bar.disable:
            self.r.say(f"step {last['step']:>6}  loss {last['loss']:.4f}  {tps:,.0f} tok/s")


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                file=sys.stderr)


class LoopClock:
    """Where the stepping phase's wall clock goes: the first step (compilation), the rest, and
    the time spent inside it on validation and on queuing checkpoints."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.first = self.start = None  # after the first step: its seconds, and the time then
        self.eval = self.ckpt = 0.0

    def timed(self, what: str, fn: Callable, *args):
        t = time.perf_counter()
        out = fn(*args)
        setattr(self, what, getattr(self, what) + time.perf_counter() - t)
        return out

    def first_done(self, metrics: dict) -> None:
        jax.block_until_ready(metrics)  # once: compile time apart from the steady rate
        self.start = time.perf_counter()
        self.first = self.start - self.t0

    def report(self, steps: int, tokens_per_step: int) -> str:
        if self.start is None or steps < 1:
            return ""
        secs = max(time.perf_counter() - self.start, 1e-9)
        return (f"loop: {steps} steps in {secs:.1f}s after a first step of {self.first:.1f}s "
                f"(compilation): {tokens_per_step * steps / secs:,.0f} tok/s, of which validation "
                f"{self.eval:.1f}s and checkpoint queuing {self.ckpt:.1f}s")
