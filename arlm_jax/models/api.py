"""The one interface between a model family and everything else, and the registry of families.

A family is a ``Family``: a frozen record of pure functions plus its config class and presets.
Training, evaluation, decoding (generate, stream, beam search, speculative decoding), sharding,
checkpoints, ``arlm info``, ``arlm plan`` and the CLI call only these functions; none of them
imports a family's internals or branches on a family's name. docs/model-families.md shows how
to add one.

Shapes (axis legend of the package): B batch, T new tokens, S state capacity, V vocabulary.

    init(key, cfg) -> params                               a pytree of float32 arrays
    param_axes(params) -> tree of tuples of logical names  one name per dimension of each leaf
                                                           (parallel/rules.py maps names to mesh
                                                           axes; the weight-decay mask derives
                                                           from them too, see ``decays``)
    forward(params, tokens, cfg, state=None, *, positions=None, dropout_key=None)
        tokens int32 [B, T] -> (logits float32 [B, T, V], state). Without a state: the plain
        teacher-forced forward (training, evaluation) and the state returned is None. With
        one: row b continues from what its state holds, and the state returned holds the T
        new tokens too.
    init_state(cfg, batch, capacity) -> state               an empty decoding state for B rows
                                                           that will hold up to ``capacity``
                                                           tokens (a KV cache, RNN states, ...)
    prefill(params, cfg, prompts, lengths, capacity) -> (state, logits float32 [B, V])
        right-padded prompts [B, T] with ``lengths`` [B] real tokens: the state after each
        row's prompt, and the logits of each row's next token.
    decode_params(params, cfg) -> params                    the layout a decode loop reads
                                                           (computed once, outside the loop)
    context_len(cfg) -> int | None                          tokens a state can hold (None:
                                                           unbounded, e.g. an RNN)
    state_axes(state) -> tree of logical names              how a decoding state is sharded

Optional operations (None when a family lacks them; the callers say so in one line):

    reorder(state, rows int32 [B']) -> state                rows of the state in that order
                                                           (beam search follows its parents)
    rollback(state, lengths int32 [B]) -> state             each row cut back to ``lengths``
                                                           tokens, after a forward that read
                                                           more (speculative decoding)
    max_rollback(cfg) -> int | None                         the most tokens one rollback may
                                                           remove (None: any; a recurrent
                                                           state keeps only its last few)
    fit(cfg, tokens, train_cfg) -> Fitted                   a fitting step for a family that is
                                                           not trained by gradient descent
                                                           (n-gram counts) from the training
                                                           tokens (int [L]): its params, and its
                                                           config with whatever the fit decided
                                                           (table sizes); None: optax training
    unrolled(cfg, n) -> cfg, depth(cfg, seq_len) -> int     for ``arlm plan``: XLA counts a
                                                           loop body's FLOPs once (the
                                                           Transformer's layer scan, a
                                                           recurrent model's time scan)
    resize(cfg, width, depth) -> cfg                        the same model at another width and
                                                           depth (scaling sweeps' shape ladder;
                                                           scaling/sweep.py)

A model config is a frozen dataclass with at least ``family`` (the registry name),
``vocab_size``, ``dtype`` and ``validate()``. It may also have ``width_mult``, a float: muP's
width multiplier (width / the width the learning rate was tuned at); the optimizer divides
the hidden matrices' Adam learning rate by it (``lr_scales``). Absent means 1 (standard).

A decoding state is any pytree whose array leaves have the batch as their leading axis, so a
family with an encoder (cross-attention keys and values computed once at prefill) keeps them
in its state beside the self-attention cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from arlm_jax.errors import ConfigError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    config: type  # frozen dataclass with a ``family`` field and ``validate()``
    presets: Mapping[str, Callable[[], Any]]  # preset name -> config
    default_preset: str
    init: Callable[..., Any]
    param_axes: Callable[[Any], Any]
    forward: Callable[..., tuple[Array, Any]]
    init_state: Callable[..., Any]
    prefill: Callable[..., tuple[Any, Array]]
    context_len: Callable[[Any], int | None]
    state_axes: Callable[[Any], Any]
    flops_per_token: Callable[[Any, int | None], float]  # training FLOPs per token at a length
    describe: Callable[[Any], str]  # one line for ``arlm info``
    decode_params: Callable[[Any, Any], Any] = lambda params, cfg: params
    reorder: Callable[[Any, Array], Any] | None = None
    rollback: Callable[[Any, Array], Any] | None = None
    max_rollback: Callable[[Any], int | None] = lambda cfg: None
    fit: Callable[..., Any] | None = None
    # For ``arlm plan``'s FLOP count of a train step built around one loop (XLA counts a loop
    # body once): the config whose loop body holds n iterations, unrolled, and how many
    # iterations the loop runs at a training length (Transformer: layers; recurrent: time steps).
    unrolled: Callable[[Any, int], Any] | None = None
    depth: Callable[[Any, int], int] | None = None
    # For scaling sweeps (scaling/sweep.py): the config at a width (the Transformer's d_model,
    # a recurrent model's hidden units) and depth (layers), every other option kept.
    resize: Callable[[Any, int, int], Any] | None = None

    def preset(self, name: str) -> Any:
        if name not in self.presets:
            raise ConfigError(f"preset={name!r} is unknown for model.family={self.name!r}; choose one of "
                              f"{', '.join(self.presets)}")
        return self.presets[name]()

    def require(self, op: str, needed_by: str) -> Callable:
        """The optional operation ``op``, or a one-line ConfigError saying who needs it."""
        fn = getattr(self, op)
        if fn is None:
            have = [o for o in ("reorder", "rollback", "fit", "resize") if getattr(self, o) is not None]
            raise ConfigError(f"{needed_by} needs the operation {op!r}, which model.family="
                              f"{self.name!r} lacks (it has: {', '.join(have) or 'none of the optional ones'})")
        return fn


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What ``Family.fit`` returns: the params, the config they belong to (a fit may set
    fields, such as the n-gram family's table sizes) and a line for the user."""

    params: Any
    cfg: Any
    note: str = ""


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to the registry (``--model.family NAME``); returns it."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def families() -> tuple[str, ...]:
    """The names of the registered families."""
    return tuple(_REGISTRY)


def get_family(name: str) -> Family:
    """The family registered as ``name``, or a one-line ConfigError listing the families."""
    if name not in _REGISTRY:
        raise ConfigError(f"model.family={name!r} is unknown; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def family_of(cfg: Any) -> Family:
    """The family of a model config (its ``family`` field)."""
    return get_family(cfg.family)


def take_rows(state: Any, rows: Array) -> Any:
    """Rows of any decoding state (batch-leading leaves), in the order given: the default
    ``reorder``. rows int32 [B']."""
    return jax.tree.map(lambda a: a[rows], state)


# Logical axes of parameters: which dimensions are features a matmul maps between, and which
# of them can be a matmul's input. A weight is decayed when it maps one feature axis to another
# (its first axis, after "layers", is an input feature): attention and MLP matrices and an
# untied output head. Lookup tables (first axis "vocab" or "length": rows, not inputs), biases,
# norm scales and positional-bias tables are not (unless decay_all).
FEATURE_AXES = frozenset({"embed", "mlp", "heads", "kv_heads", "vocab", "hidden", "gates"})
INPUT_AXES = frozenset({"embed", "mlp", "heads", "hidden"})


def decays(axes: tuple) -> bool:
    """Whether a parameter with these logical axes is a matmul weight (AdamW decays it)."""
    names = [a for a in axes if a != "layers"]
    features = [a for a in names if a in FEATURE_AXES]
    return len(features) >= 2 and bool(names) and names[0] in INPUT_AXES


def hidden_matrix(axes: tuple) -> bool:
    """Whether a parameter with these logical axes is a hidden matrix: a matmul weight whose
    input and output both grow with the width, i.e. one that touches no vocabulary axis (not
    the token embedding or the output head). Muon takes these; muP scales their Adam lr."""
    return decays(axes) and "vocab" not in axes


def lr_scales(cfg: Any, axes: Any) -> Any:
    """Per-parameter learning-rate multipliers for muP under Adam (Tensor Programs V, Table 3
    in the form with an output multiplier): 1 / ``cfg.width_mult`` for the hidden matrices,
    whose Adam update moves each output coordinate in proportion to their fan-in, and 1 for
    everything else (embeddings, norms, biases, positional tables; the output head's growth
    is taken out by the logits' 1/m instead). ``axes``: ``Family.param_axes`` of the params.
    -> a tree like the parameters of Python floats, all 1.0 without a ``width_mult``."""
    m = float(getattr(cfg, "width_mult", 1.0))
    return jax.tree.map(lambda names: 1.0 / m if hidden_matrix(names) else 1.0, axes,
                        is_leaf=lambda x: isinstance(x, tuple))
