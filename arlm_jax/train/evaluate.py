"""Evaluation over fixed windows: mean NLL, perplexity, bits per byte and accuracy.

The windows are gathered once (``EvalSet``) and every batch's sums stay on the device until
the last batch is dispatched, so an evaluation is its batches' forward passes and one
transfer: no host round trip per batch, and the same compiled ``eval_step`` (train/step.py)
every time. The sums are added on the host in float64, exactly as before.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh

from arlm_jax.data.batches import eval_batches
from arlm_jax.loss import bits_per_byte, perplexity
from arlm_jax.parallel.hosts import global_batch, process_rows


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """The evaluation windows of a split, ready to score: this process's rows of each batch."""

    batches: tuple[np.ndarray, ...]  # n_batches x int32 [rows, seq_len + 1]
    batch_size: int  # global rows per batch
    bytes_per_token: float
    mesh: Mesh | None = None

    @classmethod
    def build(cls, tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int,
              bytes_per_token: float, mesh: Mesh | None = None) -> "EvalSet":
        """``n_batches`` batches of evenly spaced windows of ``tokens`` (``data.batches.eval_batches``).
        With a ``mesh`` each process keeps only its rows."""
        rows = None if mesh is None else process_rows(batch_size, mesh)
        batches = tuple(eval_batches(tokens, batch_size, seq_len, n_batches, rows=rows))
        return cls(batches=batches, batch_size=batch_size, bytes_per_token=bytes_per_token, mesh=mesh)

    def score(self, eval_step, params: dict) -> dict:
        """Mean NLL, perplexity, bits per byte and accuracy of ``params`` on these windows.

        ``eval_step`` is ``make_eval_step(cfg, mesh=...)`` (sums per batch); the sums are
        fetched together after the last batch is dispatched."""
        sums = []
        for batch in self.batches:
            if self.mesh is not None:
                batch = global_batch(batch, self.batch_size, self.mesh)
            sums.append(eval_step(params, {"tokens": batch}))
        sums = jax.device_get(sums)
        total = {k: sum(float(m[k]) for m in sums) for k in ("nll_sum", "correct", "tokens")}
        nll, correct, n = total["nll_sum"], total["correct"], max(total["tokens"], 1.0)
        loss = nll / n
        return {"loss": loss, "ppl": perplexity(loss), "bpb": bits_per_byte(loss, self.bytes_per_token),
                "accuracy": correct / n}


def evaluate(eval_step, params: dict, tokens: np.ndarray, batch_size: int, seq_len: int,
             n_batches: int, bytes_per_token: float, mesh: Mesh | None = None) -> dict:
    """Mean NLL, perplexity, bits per byte and accuracy over fixed windows of ``tokens``.

    With a ``mesh`` (and ``make_eval_step(cfg, mesh=mesh)``) each process loads only its rows.
    To evaluate the same windows repeatedly (as training does), build an ``EvalSet`` once.
    """
    return EvalSet.build(tokens, batch_size, seq_len, n_batches, bytes_per_token, mesh).score(eval_step, params)
