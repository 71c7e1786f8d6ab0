"""arlm_jax: autoregressive language models in JAX, as pure functions, for every model family.

    cfg = arlm_jax.ModelConfig.tiny()                  # the Transformer's config; every family has one
    params = arlm_jax.init(jax.random.key(0), cfg)
    logits, _ = arlm_jax.forward(params, tokens, cfg)
    loss, metrics = arlm_jax.loss_fn(params, {"tokens": tokens}, cfg)
    out = arlm_jax.generate(params, cfg, tokens, key, max_new_tokens=32,
                            sampler=arlm_jax.Sampler(temperature=0.8, top_p=0.95))

The same calls work for every family: ``cfg.family`` says which one (models/api.py).
Layout by concern: models/ (the family interface, layers, the families), decode/, train/,
data/, parallel/, analysis/, convert/ (Hugging Face and ARPA), cli/; config.py, loss.py and
checkpoint.py at the top. ``from_hf(folder) -> (params, cfg)`` and ``to_hf(params, cfg, folder)``
move GPT-2 and LLaMA weights to and from Hugging Face folders (safetensors, no torch).
"""

from typing import Any as _Any

from arlm_jax.errors import ConfigError
from arlm_jax.config import DataConfig, MeshConfig, RunConfig, TrainConfig, model_preset
from arlm_jax.models import Family, Fitted, families, family_of, get_family, register
from arlm_jax.models.transformer.config import TransformerConfig
from arlm_jax.models.transformer.cache import KVCache, init_cache
from arlm_jax.loss import bits_per_byte, cross_entropy, loss_fn, perplexity
from arlm_jax.analysis.flops import flops_per_token, param_count
from arlm_jax.decode.sampling import Sampler
from arlm_jax.decode.inputs import pad_prompts
from arlm_jax.decode.generate import Generation, generate, stream
from arlm_jax.decode.beam import BeamResult, beam_search
from arlm_jax.decode.speculative import SpecResult, speculative_generate
from arlm_jax.parallel.mesh import make_mesh
from arlm_jax.parallel.rules import constrain
from arlm_jax.parallel.shardings import param_shardings
from arlm_jax.convert.hf import from_hf, to_hf

ModelConfig = TransformerConfig  # the default family's config, under its historical name


def init(key, cfg: _Any):
    """Random parameters of ``cfg``'s family: a pytree of float32 arrays."""
    return family_of(cfg).init(key, cfg)


def forward(params, tokens, cfg: _Any, state=None, **kwargs):
    """tokens int32 [B, T] -> (logits float32 [B, T, V], state), for ``cfg``'s family
    (``Family.forward``: without a state the plain teacher-forced forward)."""
    return family_of(cfg).forward(params, tokens, cfg, state, **kwargs)


def fit(cfg: _Any, tokens, train_cfg: _Any = None) -> Fitted:
    """The params of a family that is fitted rather than trained (``Family.fit``: n-gram
    counts) from training tokens int [L]: a ``Fitted`` (params, fitted config, note)."""
    return family_of(cfg).require("fit", "arlm_jax.fit")(cfg, tokens, train_cfg)


__all__ = [
    "ConfigError", "DataConfig", "MeshConfig", "ModelConfig", "RunConfig", "TrainConfig", "TransformerConfig",
    "model_preset", "Family", "Fitted", "families", "family_of", "get_family", "register",
    "init", "forward", "fit", "param_count", "flops_per_token",
    "cross_entropy", "loss_fn", "perplexity", "bits_per_byte",
    "KVCache", "init_cache", "Sampler", "Generation", "generate", "pad_prompts", "stream",
    "BeamResult", "beam_search", "SpecResult", "speculative_generate",
    "make_mesh", "param_shardings", "constrain", "from_hf", "to_hf",
]
__version__ = "0.1.0"
