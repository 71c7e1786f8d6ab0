"""arlm_jax: autoregressive language models in JAX, as pure functions.

    cfg = arlm_jax.ModelConfig.tiny()
    params = arlm_jax.init(jax.random.key(0), cfg)
    logits, _ = arlm_jax.forward(params, tokens, cfg)
    loss, metrics = arlm_jax.loss_fn(params, {"tokens": tokens}, cfg)
    out = arlm_jax.generate(params, cfg, tokens, key, max_new_tokens=32,
                            sampler=arlm_jax.Sampler(temperature=0.8, top_p=0.95))
"""

from arlm_jax.config import (ConfigError, DataConfig, MeshConfig, ModelConfig, RunConfig,
                             TrainConfig, model_preset)
from arlm_jax.loss import bits_per_byte, cross_entropy, loss_fn, perplexity
from arlm_jax.flops import flops_per_token, param_count
from arlm_jax.model import forward, init
from arlm_jax.kvcache import KVCache, init_cache
from arlm_jax.sampling import Sampler
from arlm_jax.generate import Generation, generate, pad_prompts, stream
from arlm_jax.beam import BeamResult, beam_search
from arlm_jax.speculative import SpecResult, speculative_generate
from arlm_jax.sharding import constrain, make_mesh, param_shardings

__all__ = [
    "ConfigError", "DataConfig", "MeshConfig", "ModelConfig", "RunConfig", "TrainConfig", "model_preset",
    "init", "forward", "param_count", "flops_per_token",
    "cross_entropy", "loss_fn", "perplexity", "bits_per_byte",
    "KVCache", "init_cache", "Sampler", "Generation", "generate", "pad_prompts", "stream",
    "BeamResult", "beam_search", "SpecResult", "speculative_generate",
    "make_mesh", "param_shardings", "constrain",
]
__version__ = "0.1.0"
