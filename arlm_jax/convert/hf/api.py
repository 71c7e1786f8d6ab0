"""``from_hf`` and ``to_hf``: a Hugging Face model folder <-> (params, TransformerConfig).

    params, cfg = arlm_jax.from_hf("gpt2/")          # config.json + model.safetensors (or shards)
    logits, _ = arlm_jax.forward(params, tokens, cfg)
    arlm_jax.to_hf(params, cfg, "out/")              # AutoModelForCausalLM.from_pretrained("out/")

Architectures: GPT-2 (gpt2.py) and LLaMA (llama.py). Weights are read one tensor at a time with
the ``safetensors`` package, as float32 (float16 and bfloat16 files too); no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from arlm_jax.convert.hf import gpt2, llama
from arlm_jax.convert.hf.common import Arch
from arlm_jax.convert.hf.files import Tensors, read_config, write_tensors
from arlm_jax.errors import ConfigError
from arlm_jax.files import atomic_write_text, require_new_folder
from arlm_jax.models.transformer.config import TransformerConfig

ARCHS: dict[str, Arch] = {a.model_type: a for a in (gpt2.ARCH, llama.ARCH)}
MAX_SHARD_BYTES = 5 * 2**30  # transformers' save_pretrained default shard size (5 GB) in bytes


def arch_of(hf: dict) -> Arch:
    """The converter of a config.json's ``model_type``, or a one-line ConfigError."""
    kind = hf.get("model_type")
    if kind not in ARCHS:
        classes = hf.get("architectures")
        seen = f" (architectures {classes})" if classes else ""
        raise ConfigError(f"hf: model_type={kind!r}{seen} is not supported; arlm_jax reads "
                          f"{', '.join(repr(k) for k in ARCHS)} ({', '.join(a.architecture for a in ARCHS.values())})")
    return ARCHS[kind]


def config_from_hf(path: str | Path) -> TransformerConfig:
    """The TransformerConfig of a HF model folder's config.json (no weights read)."""
    hf = read_config(path)
    return arch_of(hf).config_from_hf(hf)


def from_hf(path: str | Path) -> tuple[dict, TransformerConfig]:
    """(params, cfg) of a local HF model folder: float32 jax arrays in our parameter layout,
    and the config that ``arlm_jax.forward`` runs them with. Missing or mis-shaped tensors, a
    tensor the config does not account for (a bias where none is expected), and configs we
    cannot hold (rope scaling, sliding windows, other activations) are one-line ConfigErrors."""
    hf = read_config(path)
    arch = arch_of(hf)
    cfg = arch.config_from_hf(hf)
    tensors = Tensors(path)
    params = arch.params_from_hf(tensors, cfg)
    if extra := tensors.unused(arch.ignorable):
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise ConfigError(f"hf: tensor {extra[0]!r}{more} in {str(path)!r} is not part of the model its "
                          f"config.json describes ({arch.architecture}, bias={cfg.bias}, "
                          f"tie_embeddings={cfg.tie_embeddings}, n_layers={cfg.n_layers})")
    return _to_jax(params), cfg


def _to_jax(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_jax(v) for k, v in tree.items()}
    return jnp.asarray(tree, jnp.float32)


def export_arch(cfg: Any) -> Arch:
    """The HF architecture that holds ``cfg``'s model, or a one-line ConfigError naming the fields
    that rule each one out."""
    family = getattr(cfg, "family", None)
    if family != "transformer":
        raise ConfigError(f"to_hf: model.family={family!r} has no Hugging Face architecture arlm_jax writes; "
                          f"only transformer models export (as GPT-2 or LLaMA)")
    if (cfg.pos, cfg.norm, cfg.mlp) == ("learned", "layernorm", "gelu"):
        arch = gpt2.ARCH
    elif (cfg.pos, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu"):
        arch = llama.ARCH
    else:
        raise ConfigError(f"to_hf: model.pos={cfg.pos!r}, model.norm={cfg.norm!r}, model.mlp={cfg.mlp!r} match "
                          f"no Hugging Face architecture arlm_jax writes; GPT-2 is learned/layernorm/gelu, "
                          f"LLaMA is rope/rmsnorm/swiglu")
    if why := arch.exportable(cfg):
        raise ConfigError(f"to_hf: {'; '.join(why)}: not expressible as {arch.architecture}")
    return arch


def to_hf(params: dict, cfg: Any, path: str | Path, *, max_shard_bytes: int = MAX_SHARD_BYTES,
          extra_config: dict | None = None) -> list[str]:
    """Write ``params`` of ``cfg`` as a HF model folder (config.json, safetensors in float32,
    sharded with an index above ``max_shard_bytes``) that ``transformers``'
    ``AutoModelForCausalLM.from_pretrained`` loads. ``extra_config``: more config.json fields
    (e.g. ``eos_token_id``). -> the files written. The folder must be new or empty."""
    arch = export_arch(cfg)
    path = require_new_folder(path, "to_hf:")
    tensors = arch.params_to_hf(jax_to_numpy(params), cfg)
    hf = arch.config_to_hf(cfg) | {"dtype": "float32"} | (extra_config or {})
    path.mkdir(parents=True, exist_ok=True)
    files = write_tensors(path, tensors, max_shard_bytes)
    atomic_write_text(path / "config.json", json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return [*files, "config.json"]


def jax_to_numpy(tree: Any) -> Any:
    """A params tree (stacked blocks) as float32 numpy arrays, copied to the host once."""
    if isinstance(tree, dict):
        return {k: jax_to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        raise ConfigError("to_hf: params hold per-layer blocks (decode_params' layout); pass the stacked "
                          "params that init, training and from_hf return")
    return np.asarray(tree, np.float32)
