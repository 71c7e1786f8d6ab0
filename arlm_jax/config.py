"""Run-level configuration: training, data and mesh sections, and the run that holds them.

Each model family brings its own model config (models/, e.g. ``TransformerConfig``); a
``RunConfig`` holds one of them as ``model``, chosen by its ``family`` field. Every option is
validated once, at the boundary (``validate()``); the numeric code never re-checks. Errors are
``ConfigError`` with a one-line message naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from arlm_jax.errors import ConfigError, check_choice, check_positive
from arlm_jax.models import get_family

SCHEDULES = ("cosine", "constant", "wsd")
OPTIMIZERS = ("adamw", "muon")
DEFAULT_SEQ_LEN = 128  # training windows of a family without a context length (e.g. an RNN)


def model_preset(name: str, family: str = "transformer") -> Any:
    """A family's model config preset by name (e.g. ``"gpt2-124m"``)."""
    return get_family(family).preset(name)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation, schedule, logging and checkpointing of a training run."""

    steps: int = 1000
    """optimizer steps (the default demo takes about 3 minutes on 2 CPU cores)"""
    batch_size: int = 16
    """sequences per optimizer step (split over grad_accum micro-batches)"""
    seq_len: int | None = None
    """None -> the model's context length (model.max_len), else 128"""
    grad_accum: int = 1
    """micro-batches per step (same gradient, less memory)"""
    lr: float = 3e-3
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """final lr = lr * min_lr_ratio (cosine / wsd)"""
    schedule: str = "cosine"
    """cosine | constant | wsd (warmup-stable-decay)"""
    warmup_steps: int = 50
    """linear warmup from lr/warmup_steps to lr"""
    decay_fraction: float = 0.2
    """wsd: last fraction of steps that decays"""
    weight_decay: float = 0.1
    """decoupled weight decay of the matmul weights (AdamW's, and Muon's matrices)"""
    decay_norms_biases_embeddings: bool = False
    """also decay norms, biases and embeddings"""
    beta1: float = 0.9
    """AdamW first-moment decay"""
    beta2: float = 0.95
    """AdamW second-moment decay"""
    eps: float = 1e-8
    """AdamW epsilon"""
    optimizer: str = "muon"
    """muon (Muon on the hidden matrices, AdamW on the rest; docs/optimizers.md) | adamw"""
    muon_lr: float = 0.02
    """muon: peak learning rate of the hidden matrices (the AdamW rest keeps lr; same schedule)"""
    muon_beta: float = 0.95
    """muon: Nesterov momentum of the hidden matrices"""
    grad_clip: float = 1.0
    """global-norm clipping; 0 disables"""
    z_loss: float = 0.0
    """coefficient of the log(Z)^2 auxiliary loss"""
    seed: int = 0
    """init, dropout and batch order"""
    eval_every: int = 200
    """steps between validations (and one at the end)"""
    eval_batches: int = 8
    """validation batches of batch_size fixed windows each"""
    log_every: int = 10
    """steps between metric fetches (progress bar, JSONL, NaN check)"""
    ckpt_every: int = 200
    """steps between checkpoints (and one at the end)"""
    keep_checkpoints: int = 3
    """newest checkpoints kept on disk"""
    out_dir: str = "runs/demo"
    """run folder: config.json, metrics.jsonl, checkpoints/, loss.png"""
    init_from: str = ""
    """fine-tuning: a run folder (e.g. from arlm convert --from-hf) whose newest checkpoint's params
    start this run, with a fresh optimizer; `arlm train --init-from DIR` also takes its model and tokenizer"""
    progress: bool = True
    """live progress bar (off: a log line every log_every steps)"""
    sample_prompt: str = "def "
    """prompt of the sample printed at the end"""
    sample_tokens: int = 120
    """tokens in that sample (0: no sample)"""
    sample_temperature: float = 0.8
    """temperature of that sample (0: greedy)"""
    sample_top_p: float = 0.95
    """nucleus (top-p) mass of that sample (1: off)"""

    def validate(self) -> "TrainConfig":
        p = "train"
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every",
                     "ckpt_every", "keep_checkpoints"):
            check_positive(self, name, p)
        if self.seq_len is not None:
            check_positive(self, "seq_len", p)
        check_positive(self, "lr", p)
        for name in ("warmup_steps", "weight_decay", "grad_clip", "z_loss", "min_lr_ratio", "eps"):
            check_positive(self, name, p, allow_zero=True)
        check_positive(self, "sample_tokens", p, allow_zero=True)
        check_positive(self, "sample_temperature", p, allow_zero=True)
        if not 0.0 < self.sample_top_p <= 1.0:
            raise ConfigError(f"train.sample_top_p={self.sample_top_p} must be in (0, 1]")
        check_choice(self, "schedule", SCHEDULES, p)
        check_choice(self, "optimizer", OPTIMIZERS, p)
        check_positive(self, "muon_lr", p)
        if not 0.0 <= self.muon_beta < 1.0:
            raise ConfigError(f"train.muon_beta={self.muon_beta} must be in [0, 1)")
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

    corpus: str = "stdlib"
    """'stdlib' (the running Python's library), a file, a folder or a glob"""
    tokenizer: str = "byte"
    """byte | gpt2 | cl100k_base | o200k_base | path/to/file.tiktoken"""
    val_fraction: float = 0.05
    """fraction of documents held out for validation"""
    cache_dir: str = ""
    """'' -> $ARLM_CACHE or ~/.cache/arlm_jax"""

    def validate(self) -> "DataConfig":
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if not self.corpus:
            raise ConfigError("data.corpus is empty; give 'stdlib', a file, a folder or a glob")
        return self


@dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """The device mesh of a run (parallel/mesh.py): sizes of the data, fsdp and tensor axes."""

    data: int = 1
    """data-parallel replicas (-1: the devices left over)"""
    fsdp: int = -1
    """data parallelism that also splits weights and optimizer state (-1: left over)"""
    tensor: int = 1
    """tensor parallelism: heads, MLP hidden units and vocabulary split (-1: left over)"""
    devices: int = 0
    """devices to use, the first N of jax.devices() (0: all; one process only)"""

    def validate(self) -> "MeshConfig":
        for name in ("data", "fsdp", "tensor"):
            value = getattr(self, name)
            if value == 0 or value < -1:
                raise ConfigError(f"mesh.{name}={value} must be a positive size or -1 (the devices left over)")
        if [self.data, self.fsdp, self.tensor].count(-1) > 1:
            raise ConfigError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
        check_positive(self, "devices", "mesh", allow_zero=True)
        return self


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a training run needs; saved beside its checkpoints."""

    preset: str = "demo"
    """the model preset the run started from (a name in its family's presets)"""
    model: Any = field(default_factory=lambda: model_preset("demo"))
    """a family's model config"""
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.train.validate()
        self.data.validate()
        self.mesh.validate()
        ctx = get_family(self.model.family).context_len(self.model)
        if ctx is not None and self.seq_len > ctx:
            raise ConfigError(f"train.seq_len={self.seq_len} must be <= model.max_len={ctx}")
        return self

    @property
    def seq_len(self) -> int:
        """Tokens per training window: train.seq_len, else the model's context length (or
        DEFAULT_SEQ_LEN for a family with an unbounded context)."""
        ctx = get_family(self.model.family).context_len(self.model)
        return self.train.seq_len or ctx or DEFAULT_SEQ_LEN


def to_dict(cfg: Any) -> dict:
    """A JSON-ready nested dict of a config dataclass (tuples as lists, as JSON reads them back)."""
    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, list | tuple) else x
    return plain(dataclasses.asdict(cfg))


def _from_dict_of(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"the {prefix.rstrip('.')} section is {data!r}, not a table of options")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]} is not an option; choose from {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if (allowed := _type_mismatch(value, hints[name])) is not None:
            raise ConfigError(f"{prefix}{name}={value!r} is not {allowed}")
    return cls(**data)


# what a value of each scalar field type is called in a one-line error (cli/errors.py too)
KIND_NAMES = {bool: "true or false", int: "an int", float: "a float", str: "a string", type(None): "none"}


def _type_mismatch(value: Any, hint: Any) -> str | None:
    """What a field of type ``hint`` allows, when ``value`` is not that (None when it is, or
    when the hint is not a plain scalar type or a union of them)."""
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not all(k in KIND_NAMES for k in kinds):
        return None

    def fits(kind: type) -> bool:
        if kind is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, kind)
    if any(fits(k) for k in kinds):
        return None
    return " or ".join(KIND_NAMES[k] for k in sorted(kinds, key=lambda k: k is type(None)))


def model_from_dict(data: dict) -> Any:
    """A family's model config from its dict (``family`` picks the class; default transformer)."""
    if not isinstance(data, dict):
        raise ConfigError(f"the model section is {data!r}, not a table of options")
    fam = get_family(data.get("family", "transformer"))
    return _from_dict_of(fam.config, {**data, "family": fam.name}, "model.")


def from_dict(data: dict) -> RunConfig:
    """Inverse of ``to_dict`` for a RunConfig (unknown keys are a ConfigError)."""
    sub = {"train": TrainConfig, "data": DataConfig, "mesh": MeshConfig}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "model":
            kwargs[key] = model_from_dict(value)
        elif key in sub:
            kwargs[key] = _from_dict_of(sub[key], value, f"{key}.")
        elif key == "preset":
            kwargs[key] = value
        else:
            raise ConfigError(f"{key} is not a config section; choose from preset, model, {', '.join(sub)}")
    return RunConfig(**kwargs)
