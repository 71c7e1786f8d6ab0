"""The Transformer family's config: shape and options, validated once, and its presets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from arlm_jax.errors import ConfigError, check_choice, check_positive
from arlm_jax.models.precision import AUTO

POS_ENCODINGS = ("learned", "sinusoidal", "rope", "alibi", "relative")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
MLPS = ("gelu", "swiglu")
DTYPES = ("float32", "bfloat16")
MATMUL_DTYPES = (AUTO, *DTYPES)
REMAT = ("none", "full", "dots")
PARAMETRIZATIONS = ("standard", "mup")


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Shape and options of the decoder-only Transformer (``--model.family transformer``).

    Axis legend used in every docstring and einsum of the package:
      B batch, T query positions, S key positions, D d_model, H query heads,
      K kv heads, G = H // K query heads per kv head, E head_dim, F d_ff, V vocab, L layers.
    """

    family: str = "transformer"
    """the model family (--model.family): transformer"""
    vocab_size: int = 257
    """token ids; `arlm train` sets it to the tokenizer's unless given"""
    n_layers: int = 2
    """Transformer blocks"""
    n_heads: int = 4
    """query heads; head_dim = d_model / n_heads"""
    n_kv_heads: int | None = None
    """None -> n_heads (MHA); 1 -> MQA; else GQA"""
    d_model: int = 64
    """residual stream width"""
    d_ff: int | None = None
    """None -> 4*d_model (gelu) or 8/3*d_model rounded to 64 (swiglu)"""
    max_len: int = 128
    """context length: longest sequence the model is trained / decoded at"""
    pos: str = "learned"
    """learned | sinusoidal | rope | alibi | relative"""
    norm: str = "layernorm"
    """layernorm | rmsnorm"""
    norm_position: str = "pre"
    """pre | post"""
    mlp: str = "gelu"
    """gelu | swiglu"""
    tie_embeddings: bool = True
    """output projection = token embedding transposed"""
    bias: bool = True
    """biases in attention / MLP projections and layernorm"""
    dropout: float = 0.0
    """applied only when forward() is given a dropout key"""
    dtype: str = "float32"
    """compute dtype; params, softmax and loss stay float32"""
    matmul_dtype: str = ""
    """'' -> dtype; bfloat16: projection and MLP matmul operands rounded to bfloat16, products
    accumulated and returned in float32 (2-4x faster matmuls on CPUs with AVX-512-BF16 or AMX);
    auto: bfloat16 on an accelerator or such a CPU, else dtype (models/precision.py)"""
    remat: str = "none"
    """none | full | dots (save matmul outputs only)"""
    scan_unroll: int = 1
    """blocks per lax.scan iteration (n_layers unrolls fully: faster steps, slower compile)"""
    rope_theta: float = 10000.0
    """RoPE base frequency"""
    rel_buckets: int = 32
    """T5 relative-position buckets"""
    rel_max_distance: int = 128
    """T5 relative positions: distance of the last bucket"""
    norm_eps: float = 1e-5
    """epsilon inside the norms"""
    init_std: float = 0.02
    """std of the normal init (residual outputs also / sqrt(2 n_layers))"""
    parametrization: str = "standard"
    """standard | mup (muP: init, Adam lrs, logit and attention scales that keep the lr across widths)"""
    mup_base_width: int = 128
    """mup: the d_model the lr was tuned at (there mup equals standard); keep it fixed across a sweep"""
    mup_base_head_dim: int = 0
    """mup: attention scales by sqrt(this)/head_dim; 0 -> mup_base_width / n_heads (a sweep at fixed heads)"""

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

    @property
    def width_mult(self) -> float:
        """muP's width multiplier m = d_model / mup_base_width (1 under the standard
        parametrization). Hidden matrices' init std is divided by sqrt(m), their Adam learning
        rate by m (``models.api.lr_scales``), and the logits by m."""
        return self.d_model / self.mup_base_width if self.parametrization == "mup" else 1.0

    @property
    def attn_scale(self) -> float | None:
        """The attention-score scale, or None for the default 1/sqrt(head_dim). Under muP it is
        sqrt(E0)/E (E = head_dim, E0 = mup_base_head_dim): proportional to 1/E, since after
        training queries and keys are correlated and their dot product grows like E, and equal
        to the default at E = E0. Written as 1/sqrt(E) * sqrt(E0/E), so exact at E = E0."""
        if self.parametrization != "mup":
            return None
        base = self.mup_base_head_dim or self.mup_base_width / self.n_heads
        return 1.0 / math.sqrt(self.head_dim) * math.sqrt(base / self.head_dim)

    def validate(self) -> "TransformerConfig":
        p = "model"
        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "max_len", "rel_buckets",
                     "rel_max_distance", "scan_unroll"):
            check_positive(self, name, p)
        if self.n_kv_heads is not None:
            check_positive(self, "n_kv_heads", p)
        if self.d_ff is not None:
            check_positive(self, "d_ff", p)
        check_positive(self, "rope_theta", p)
        check_positive(self, "norm_eps", p)
        check_positive(self, "init_std", p)
        check_positive(self, "mup_base_width", p)
        check_positive(self, "mup_base_head_dim", p, allow_zero=True)
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
        check_choice(self, "pos", POS_ENCODINGS, p)
        check_choice(self, "norm", NORMS, p)
        check_choice(self, "norm_position", NORM_POSITIONS, p)
        check_choice(self, "mlp", MLPS, p)
        check_choice(self, "dtype", DTYPES, p)
        if self.matmul_dtype:
            check_choice(self, "matmul_dtype", MATMUL_DTYPES, p)
        check_choice(self, "remat", REMAT, p)
        check_choice(self, "parametrization", PARAMETRIZATIONS, p)
        return self

    # ---- presets ---------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> "TransformerConfig":
        """For tests: a few thousand parameters, compiles in about a second."""
        return cls(vocab_size=64, n_layers=2, n_heads=4, d_model=32, max_len=32)

    @classmethod
    def demo(cls) -> "TransformerConfig":
        """The CPU demo `arlm train` runs by default (byte tokenizer, ~0.8M parameters). Its four
        blocks are unrolled: on XLA:CPU that steps ~10% faster than one scanned block, for a
        compile time that stays ~3 s. Its matmul operands are bfloat16 where that is fast
        (``matmul_dtype='auto'``), float32 elsewhere (docs/benchmarks.md, issue 13)."""
        return cls(vocab_size=257, n_layers=4, n_heads=4, d_model=128, max_len=128, scan_unroll=4,
                   matmul_dtype=AUTO)

    @classmethod
    def _gpt2(cls, n_layers: int, n_heads: int, d_model: int) -> "TransformerConfig":
        return cls(vocab_size=50257, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                   max_len=1024, pos="learned", norm="layernorm", mlp="gelu", tie_embeddings=True,
                   bias=True)

    @classmethod
    def gpt2_124m(cls) -> "TransformerConfig":
        return cls._gpt2(12, 12, 768)

    @classmethod
    def gpt2_350m(cls) -> "TransformerConfig":
        return cls._gpt2(24, 16, 1024)

    @classmethod
    def gpt2_774m(cls) -> "TransformerConfig":
        return cls._gpt2(36, 20, 1280)

    @classmethod
    def gpt2_1_5b(cls) -> "TransformerConfig":
        return cls._gpt2(48, 25, 1600)

    @classmethod
    def _llama(cls, n_layers: int, n_heads: int, n_kv_heads: int, d_model: int, d_ff: int,
               max_len: int) -> "TransformerConfig":
        return cls(vocab_size=32000, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                   d_model=d_model, d_ff=d_ff, max_len=max_len, pos="rope", norm="rmsnorm",
                   mlp="swiglu", tie_embeddings=False, bias=False, norm_eps=1e-6)

    @classmethod
    def llama_125m(cls) -> "TransformerConfig":
        return cls._llama(12, 12, 12, 768, 2048, 2048)

    @classmethod
    def llama_1b(cls) -> "TransformerConfig":
        """TinyLlama-1.1B shapes (GQA, 4 kv heads)."""
        return cls._llama(22, 32, 4, 2048, 5632, 2048)

    @classmethod
    def llama_7b(cls) -> "TransformerConfig":
        return cls._llama(32, 32, 32, 4096, 11008, 2048)


PRESETS = {
    "tiny": TransformerConfig.tiny,
    "demo": TransformerConfig.demo,
    "gpt2-124m": TransformerConfig.gpt2_124m,
    "gpt2-350m": TransformerConfig.gpt2_350m,
    "gpt2-774m": TransformerConfig.gpt2_774m,
    "gpt2-1.5b": TransformerConfig.gpt2_1_5b,
    "llama-125m": TransformerConfig.llama_125m,
    "llama-1b": TransformerConfig.llama_1b,
    "llama-7b": TransformerConfig.llama_7b,
}

