"""Frozen, keyword-only configuration dataclasses and named presets.

Every option is validated once, here, at the boundary (``validate()``); the numeric code
never re-checks. Errors are ``ConfigError`` with a one-line message naming the field and
what is allowed, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad user-supplied value. ``str(err)`` is a one-line message for the user."""


POS_ENCODINGS = ("learned", "sinusoidal", "rope", "alibi", "relative")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
MLPS = ("gelu", "swiglu")
DTYPES = ("float32", "bfloat16")
REMAT = ("none", "full", "dots")
SCHEDULES = ("cosine", "constant", "wsd")


def _choice(obj: Any, name: str, allowed: tuple[str, ...], prefix: str) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{prefix}.{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def _positive(obj: Any, name: str, prefix: str, *, allow_zero: bool = False) -> None:
    value = getattr(obj, name)
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{prefix}.{name}={value!r} must be {bound}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and options of the decoder-only Transformer.

    Axis legend used in every docstring and einsum of the package:
      B batch, T query positions, S key positions, D d_model, H query heads,
      K kv heads, G = H // K query heads per kv head, E head_dim, F d_ff, V vocab, L layers.
    """

    vocab_size: int = 257  # token ids; `arlm train` sets it to the tokenizer's unless given
    n_layers: int = 2  # Transformer blocks
    n_heads: int = 4  # query heads; head_dim = d_model / n_heads
    n_kv_heads: int | None = None  # None -> n_heads (MHA); 1 -> MQA; else GQA
    d_model: int = 64  # residual stream width
    d_ff: int | None = None  # None -> 4*d_model (gelu) or 8/3*d_model rounded to 64 (swiglu)
    max_len: int = 128  # context length: longest sequence the model is trained / decoded at
    pos: str = "learned"  # learned | sinusoidal | rope | alibi | relative
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_position: str = "pre"  # pre | post
    mlp: str = "gelu"  # gelu | swiglu
    tie_embeddings: bool = True  # output projection = token embedding transposed
    bias: bool = True  # biases in attention / MLP projections and layernorm
    dropout: float = 0.0  # applied only when forward() is given a dropout key
    dtype: str = "float32"  # compute dtype; params, softmax and loss stay float32
    remat: str = "none"  # none | full | dots (save matmul outputs only)
    scan_unroll: int = 1  # blocks per lax.scan iteration (n_layers unrolls fully: faster steps, slower compile)
    rope_theta: float = 10000.0  # RoPE base frequency
    rel_buckets: int = 32  # T5 relative-position buckets
    rel_max_distance: int = 128  # T5 relative positions: distance of the last bucket
    norm_eps: float = 1e-5  # epsilon inside the norms
    init_std: float = 0.02  # std of the normal init (residual outputs also / sqrt(2 n_layers))

    # ---- derived -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * -(-(8 * self.d_model // 3) // 64)
        return 4 * self.d_model

    def validate(self) -> "ModelConfig":
        p = "model"
        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "max_len", "rel_buckets",
                     "rel_max_distance", "scan_unroll"):
            _positive(self, name, p)
        if self.n_kv_heads is not None:
            _positive(self, "n_kv_heads", p)
        if self.d_ff is not None:
            _positive(self, "d_ff", p)
        _positive(self, "rope_theta", p)
        _positive(self, "norm_eps", p)
        _positive(self, "init_std", p)
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must be divisible by model.n_kv_heads={self.kv_heads}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"model.pos='rope' needs an even head_dim, got d_model/n_heads={self.head_dim}")
        if self.pos == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"model.pos='sinusoidal' needs an even model.d_model, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        _choice(self, "pos", POS_ENCODINGS, p)
        _choice(self, "norm", NORMS, p)
        _choice(self, "norm_position", NORM_POSITIONS, p)
        _choice(self, "mlp", MLPS, p)
        _choice(self, "dtype", DTYPES, p)
        _choice(self, "remat", REMAT, p)
        return self

    # ---- presets ---------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> "ModelConfig":
        """For tests: a few thousand parameters, compiles in about a second."""
        return cls(vocab_size=64, n_layers=2, n_heads=4, d_model=32, max_len=32)

    @classmethod
    def demo(cls) -> "ModelConfig":
        """The CPU demo `arlm train` runs by default (byte tokenizer, ~0.8M parameters)."""
        return cls(vocab_size=257, n_layers=4, n_heads=4, d_model=128, max_len=128)

    @classmethod
    def _gpt2(cls, n_layers: int, n_heads: int, d_model: int) -> "ModelConfig":
        return cls(vocab_size=50257, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                   max_len=1024, pos="learned", norm="layernorm", mlp="gelu", tie_embeddings=True,
                   bias=True)

    @classmethod
    def gpt2_124m(cls) -> "ModelConfig":
        return cls._gpt2(12, 12, 768)

    @classmethod
    def gpt2_350m(cls) -> "ModelConfig":
        return cls._gpt2(24, 16, 1024)

    @classmethod
    def gpt2_774m(cls) -> "ModelConfig":
        return cls._gpt2(36, 20, 1280)

    @classmethod
    def gpt2_1_5b(cls) -> "ModelConfig":
        return cls._gpt2(48, 25, 1600)

    @classmethod
    def _llama(cls, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int, d_ff: int,
               max_len: int) -> "ModelConfig":
        return cls(vocab_size=32000, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                   d_model=d_model, d_ff=d_ff, max_len=max_len, pos="rope", norm="rmsnorm",
                   mlp="swiglu", tie_embeddings=False, bias=False, norm_eps=1e-6)

    @classmethod
    def llama_125m(cls) -> "ModelConfig":
        return cls._llama(12, 12, 12, 768, 2048, 2048)

    @classmethod
    def llama_1b(cls) -> "ModelConfig":
        """TinyLlama-1.1B shapes (GQA, 4 kv heads)."""
        return cls._llama(22, 32, 4, 2048, 5632, 2048)

    @classmethod
    def llama_7b(cls) -> "ModelConfig":
        return cls._llama(32, 32, 32, 4096, 11008, 2048)


MODEL_PRESETS = {
    "tiny": ModelConfig.tiny,
    "demo": ModelConfig.demo,
    "gpt2-124m": ModelConfig.gpt2_124m,
    "gpt2-350m": ModelConfig.gpt2_350m,
    "gpt2-774m": ModelConfig.gpt2_774m,
    "gpt2-1.5b": ModelConfig.gpt2_1_5b,
    "llama-125m": ModelConfig.llama_125m,
    "llama-1b": ModelConfig.llama_1b,
    "llama-7b": ModelConfig.llama_7b,
}


def model_preset(name: str) -> ModelConfig:
    """Look up a preset by name (e.g. ``"gpt2-124m"``)."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"preset={name!r} is unknown; choose one of {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]()


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation, schedule, logging and checkpointing of a training run."""

    steps: int = 600  # optimizer steps (the default demo takes about 3 minutes on 2 CPU cores)
    batch_size: int = 16  # sequences per optimizer step (split over grad_accum micro-batches)
    seq_len: int | None = None  # None -> model.max_len
    grad_accum: int = 1  # micro-batches per step (same gradient, less memory)
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine / wsd)
    schedule: str = "cosine"  # cosine | constant | wsd (warmup-stable-decay)
    warmup_steps: int = 50  # linear warmup from lr/warmup_steps to lr
    decay_fraction: float = 0.2  # wsd: last fraction of steps that decays
    weight_decay: float = 0.1  # AdamW decoupled weight decay of the matmul weights
    decay_norms_biases_embeddings: bool = False  # also decay norms, biases and embeddings
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # global-norm clipping; 0 disables
    z_loss: float = 0.0  # coefficient of the log(Z)^2 auxiliary loss
    seed: int = 0  # init, dropout and batch order
    eval_every: int = 200  # steps between validations (and one at the end)
    eval_batches: int = 8  # validation batches of batch_size fixed windows each
    log_every: int = 10  # steps between metric fetches (progress bar, JSONL, NaN check)
    ckpt_every: int = 200  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    out_dir: str = "runs/demo"  # run folder: config.json, metrics.jsonl, checkpoints/, loss.png
    progress: bool = True  # live progress bar (off: a log line every log_every steps)
    sample_prompt: str = "def "  # prompt of the greedy sample printed at the end
    sample_tokens: int = 120  # tokens in that sample (0: no sample)

    def validate(self) -> "TrainConfig":
        p = "train"
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every",
                     "ckpt_every", "keep_checkpoints"):
            _positive(self, name, p)
        if self.seq_len is not None:
            _positive(self, "seq_len", p)
        _positive(self, "lr", p)
        for name in ("warmup_steps", "weight_decay", "grad_clip", "z_loss", "min_lr_ratio", "eps"):
            _positive(self, name, p, allow_zero=True)
        _positive(self, "sample_tokens", p, allow_zero=True)
        _choice(self, "schedule", SCHEDULES, p)
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"train.decay_fraction={self.decay_fraction} must be in (0, 1]")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError("train.beta1 and train.beta2 must be in [0, 1)")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size={self.batch_size} must be divisible by train.grad_accum={self.grad_accum}")
        return self


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where text comes from and how it is tokenised."""

    corpus: str = "stdlib"  # "stdlib" (the running Python's library), a file, a folder or a glob
    tokenizer: str = "byte"  # byte | gpt2 | cl100k_base | o200k_base | path/to/file.tiktoken
    val_fraction: float = 0.05  # fraction of documents held out for validation
    cache_dir: str = ""  # "" -> $ARLM_CACHE or ~/.cache/arlm_jax

    def validate(self) -> "DataConfig":
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if not self.corpus:
            raise ConfigError("data.corpus is empty; give 'stdlib', a file, a folder or a glob")
        return self


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """The device mesh of a run (sharding.py): sizes of the data, fsdp and tensor axes."""

    data: int = 1  # data-parallel replicas (-1: the devices left over)
    fsdp: int = -1  # data parallelism that also splits weights and optimizer state (-1: left over)
    tensor: int = 1  # tensor parallelism: heads, MLP hidden units and vocabulary split (-1: left over)
    devices: int = 0  # devices to use, the first N of jax.devices() (0: all; one process only)

    def validate(self) -> "MeshConfig":
        for name in ("data", "fsdp", "tensor"):
            value = getattr(self, name)
            if value == 0 or value < -1:
                raise ConfigError(f"mesh.{name}={value} must be a positive size or -1 (the devices left over)")
        if [self.data, self.fsdp, self.tensor].count(-1) > 1:
            raise ConfigError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
        _positive(self, "devices", "mesh", allow_zero=True)
        return self


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a training run needs; saved beside its checkpoints."""

    preset: str = "demo"
    model: ModelConfig = field(default_factory=ModelConfig.demo)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.train.validate()
        self.data.validate()
        self.mesh.validate()
        seq = self.train.seq_len or self.model.max_len
        if seq > self.model.max_len:
            raise ConfigError(f"train.seq_len={seq} must be <= model.max_len={self.model.max_len}")
        return self

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_len


def to_dict(cfg: Any) -> dict:
    """A JSON-ready nested dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _from_dict_of(cls: type, data: dict, prefix: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]} is not an option; choose from {', '.join(names)}")
    return cls(**data)


def from_dict(data: dict) -> RunConfig:
    """Inverse of ``to_dict`` for a RunConfig (unknown keys are a ConfigError)."""
    data = dict(data)
    sub = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "mesh": MeshConfig}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in sub:
            kwargs[key] = _from_dict_of(sub[key], value, f"{key}.")
        elif key == "preset":
            kwargs[key] = value
        else:
            raise ConfigError(f"{key} is not a config section; choose from preset, {', '.join(sub)}")
    return RunConfig(**kwargs)
