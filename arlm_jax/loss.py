"""Next-token cross-entropy (teacher forcing) in float32, and the metrics built on it."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from arlm_jax.models import family_of

Array = jax.Array


def cross_entropy(logits: Array, targets: Array, mask: Array | None = None,
                  z_loss: float = 0.0) -> tuple[Array, dict]:
    """Masked mean negative log-likelihood over real tokens.

    logits [B, T, V] (upcast to float32), targets int [B, T], mask [B, T] (1 = real token;
    None = all real). Returns (loss, metrics) where loss = mean NLL + z_loss * mean(log Z^2)
    and metrics holds float32 sums and means: ``nll`` (mean NLL), ``accuracy``, ``tokens``,
    ``nll_sum`` and ``correct`` (sums, so several batches can be combined exactly).
    """
    logits = logits.astype(jnp.float32)
    mask = jnp.ones(targets.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll = log_z - target_logit
    n = jnp.maximum(mask.sum(), 1.0)
    nll_sum = (nll * mask).sum()
    loss = nll_sum / n
    if z_loss > 0.0:
        loss = loss + z_loss * (jnp.square(log_z) * mask).sum() / n
    correct = ((jnp.argmax(logits, axis=-1) == targets) * mask).sum()
    metrics = {"nll": nll_sum / n, "accuracy": correct / n, "tokens": mask.sum(),
               "nll_sum": nll_sum, "correct": correct}
    return loss, metrics


def loss_fn(params: Any, batch: dict, cfg: Any, *, dropout_key: Array | None = None,
            z_loss: float = 0.0) -> tuple[Array, dict]:
    """Teacher-forced LM loss of one batch, for a model of any family.

    batch["tokens"] int32 [B, T+1] (inputs are [:, :-1], targets [:, 1:]);
    optional batch["mask"] [B, T] weighting the targets. -> (loss, metrics) as ``cross_entropy``.
    """
    tokens = batch["tokens"]
    logits, _ = family_of(cfg).forward(params, tokens[:, :-1], cfg, dropout_key=dropout_key)
    return cross_entropy(logits, tokens[:, 1:], batch.get("mask"), z_loss)


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL in nats)."""
    return math.exp(min(float(mean_nll), 700.0))


def bits_per_byte(mean_nll: float, bytes_per_token: float) -> float:
    """Mean NLL (nats per token) converted to bits per UTF-8 byte of the text."""
    return float(mean_nll) / math.log(2.0) / bytes_per_token
