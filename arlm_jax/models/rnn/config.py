"""The recurrent families' config (``rnn``, ``lstm``, ``gru``: one class, the cell is the
family), validated once, and their presets."""

from __future__ import annotations

from dataclasses import dataclass

from arlm_jax.errors import ConfigError, check_choice, check_positive
from arlm_jax.models.rnn.cells import CELLS

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True, kw_only=True)
class RecurrentConfig:
    """Shape and options of a recurrent LM (``--model.family rnn | lstm | gru``).

    Axis legend: B batch, T time, S state slots, E embedding width, H hidden width, V vocab,
    L layers.
    """

    family: str = "lstm"
    """the model family (--model.family), which is the cell: rnn (Elman, tanh) | lstm | gru"""
    vocab_size: int = 257
    """token ids; `arlm train` sets it to the tokenizer's unless given"""
    n_layers: int = 2
    """stacked recurrent layers"""
    d_embed: int = 256
    """token embedding width (the first layer's input)"""
    d_hidden: int = 512
    """hidden units per layer; with tie_embeddings the last layer has d_embed units (AWD-LSTM)"""
    tie_embeddings: bool = True
    """output projection = token embedding transposed"""
    dropout: float = 0.0
    """dropout on the embeddings, between layers and on the last layer's output (training only)"""
    locked_dropout: bool = False
    """variational dropout: one mask per sequence, the same at every time step (AWD-LSTM)"""
    weight_drop: float = 0.0
    """DropConnect on the recurrent kernels, one mask per batch (AWD-LSTM's weight drop)"""
    history: int = 16
    """decoding states kept per row, for rollback: speculative decoding's k must be < history"""
    unroll: int = 1
    """time steps per iteration of the compiled scan"""
    dtype: str = "float32"
    """compute dtype of the matmuls (float32 or bfloat16); carries, params and logits stay float32"""
    init_std: float = 0.05
    """std of the normal init of the token embedding (and of an untied output matrix)"""

    def hidden_sizes(self) -> tuple[int, ...]:
        """Hidden units of each layer: d_hidden, the last d_embed when the output is tied."""
        last = self.d_embed if self.tie_embeddings else self.d_hidden
        return (self.d_hidden,) * (self.n_layers - 1) + (last,)

    def validate(self) -> "RecurrentConfig":
        p = "model"
        check_choice(self, "family", tuple(CELLS), p)
        for name in ("vocab_size", "n_layers", "d_embed", "d_hidden", "unroll", "init_std"):
            check_positive(self, name, p)
        for name in ("dropout", "weight_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be in [0, 1)")
        if self.history < 2:
            raise ConfigError(f"model.history={self.history} must be >= 2 (a rollback keeps at least one state)")
        check_choice(self, "dtype", DTYPES, p)
        return self


def presets(family: str) -> dict:
    """``tiny`` (tests), ``demo`` (the CPU demo: ~2M parameters, byte vocabulary) and ``awd``
    (AWD-LSTM's shape: 3 layers of 1150 units, 400-wide tied embedding, its dropouts)."""
    return {
        "tiny": lambda: RecurrentConfig(family=family, vocab_size=64, d_embed=16, d_hidden=32),
        "demo": lambda: RecurrentConfig(family=family),
        "awd": lambda: RecurrentConfig(family=family, n_layers=3, d_embed=400, d_hidden=1150, dropout=0.3,
                                       locked_dropout=True, weight_drop=0.5),
    }
