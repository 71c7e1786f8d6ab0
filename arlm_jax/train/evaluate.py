"""Evaluation over fixed windows: mean NLL, perplexity, bits per byte and accuracy."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from arlm_jax.data import tokens as data_lib
from arlm_jax.loss import bits_per_byte, perplexity
from arlm_jax.parallel.hosts import global_batch, process_rows


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
