"""Speculative decoding with static shapes: a cheap drafter proposes k tokens, the target scores
all of them in one forward pass, and modified rejection sampling keeps the output distribution
exactly the target's (Leviathan et al. 2023; Chen et al. 2023).

One iteration of the compiled ``lax.while_loop``, per row (rows accept different counts):

  1. propose d_1..d_k with probabilities q_i: a draft model decoding from its own KV cache (it
     also reads d_k, so its cache stays one behind the target's), or prompt lookup (the k
     tokens that followed the latest earlier occurrence of the last n tokens; q is a point mass);
  2. the target reads [pending, d_1..d_k] at once -> p_1..p_{k+1};
  3. accept d_i while u_i < p_i(d_i) / q_i(d_i) (greedy rows: while d_i is p_i's argmax);
  4. after n accepted drafts emit one more token: from norm(max(0, p_{n+1} - q_{n+1})) after a
     rejection, from p_{k+1} (the bonus) when all k were accepted; greedy rows take the argmax;
  5. roll both states back to each row's accepted tokens (``Family.rollback``; for a KV cache
     that is lowering its lengths, no copies).

p and q are the sampler's processed distributions (temperature, top-k, top-p, min-p act on
both alike), so the output follows the same distribution as ``generate`` with that sampler.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from arlm_jax.decode.generate import Generation, push_stop_window
from arlm_jax.decode.inputs import Stop, check_inputs, normalize_stop
from arlm_jax.decode.sampling import Sampler, argmax, categorical_from_weights, process
from arlm_jax.errors import ConfigError
from arlm_jax.models import family_of

Array = jax.Array


@flax.struct.dataclass
class SpecResult:
    out: Generation  # as ``generate`` returns
    target_calls: Array  # int32 [B] verify passes (target forwards after the prefill) while live
    accepted: Array  # int32 [B] draft tokens accepted
    k: int = flax.struct.field(pytree_node=False, default=1)

    @property
    def acceptance_rate(self) -> Array:
        """Accepted drafts / proposed drafts, per row."""
        return self.accepted / jnp.maximum(self.k * self.target_calls, 1)

    @property
    def tokens_per_call(self) -> Array:
        """Mean tokens emitted per verify pass, per row (the prefill's first token not counted)."""
        return (self.out.lengths - 1) / jnp.maximum(self.target_calls, 1)


@flax.struct.dataclass
class _State:
    target: Any  # the target family's decoding state
    draft: Any  # the draft's, or None (prompt lookup)
    token: Array  # int32 [B] pending: emitted, not yet read by the models
    done: Array  # bool [B] stopped by a stop sequence
    n_out: Array  # int32 [B] tokens emitted
    ctx: Array  # int32 [B, C] prompt then emitted tokens (prompt lookup reads it)
    logp: Array  # float32 [B, C] target log-prob of each emitted token, aligned with ctx
    ctx_len: Array  # int32 [B]
    held: Array  # int32 [B] tokens the model states hold (all emitted but the pending one)
    window: Array  # int32 [B, M] last M emitted tokens, for stop sequences
    key: Array
    calls: Array  # int32 [B]
    accepted: Array  # int32 [B]


def _dist(logits: Array, sampler: Sampler | None) -> tuple[Array | None, Array, Array | None]:
    """Under the sampler: (probabilities [.., V] that sampling rows draw from, logits [.., V] that
    greedy rows take the argmax of, greedy-row flag [..]). logits [B, V] or [B, J, V].
    Without a sampler every row is greedy: (None, logits, None), and no randomness is drawn."""
    if sampler is None:
        return None, logits, None

    def one(lg: Array) -> tuple[Array, Array]:  # [B, V]: per-row sampler values line up with B
        penalised, final = process(lg, sampler)
        return jax.nn.softmax(final, axis=-1), penalised

    probs, penalised = one(logits) if logits.ndim == 2 else jax.vmap(one, 1, 1)(logits)
    t = jnp.asarray(sampler.temperature)
    greedy = (t == 0).reshape(t.shape + (1,) * (logits.ndim - 1 - t.ndim))
    return probs, penalised, jnp.broadcast_to(greedy, logits.shape[:-1])


def _draw(key: Array, probs: Array | None, greedy: Array | None, logits: Array) -> Array:
    """A token per row: the argmax of ``logits`` for greedy rows, else drawn from ``probs``."""
    if greedy is None:
        return argmax(logits)
    return jnp.where(greedy, argmax(logits), categorical_from_weights(key, probs))


def _emit(st: _State, cand: Array, count: Array, cand_lp: Array, stop: Stop, n_max: int) -> _State:
    """Append cand[:, :count] (int32 [B, J], count [B]) to each row's output, one token at a time,
    ending a row at a stop sequence or at n_max tokens."""
    b, c = st.ctx.shape
    rows = jnp.arange(b)
    done, n_out, window, ctx, logp = st.done, st.n_out, st.window, st.ctx, st.logp
    for j in range(cand.shape[1]):
        go = (j < count) & ~done & (n_out < n_max)
        tok = cand[:, j]
        pos = jnp.where(go, st.ctx_len + (n_out - st.n_out), c)  # c is out of range: dropped
        ctx = ctx.at[rows, pos].set(tok, mode="drop")
        logp = logp.at[rows, pos].set(cand_lp[:, j], mode="drop")
        window, hit = push_stop_window(window, tok, go, stop)
        done = done | (go & hit)
        n_out = n_out + go
    return st.replace(done=done, n_out=n_out, ctx=ctx, logp=logp, ctx_len=st.ctx_len + (n_out - st.n_out),
                      window=window)


def _lookup(ctx: Array, ctx_len: Array, k: int, n: int) -> Array:
    """Prompt-lookup proposals [B, k]: the tokens after the latest earlier occurrence of the last
    n tokens of each row's context, continued periodically past the end of the text (the last
    token repeated when there is no occurrence)."""
    b, c = ctx.shape
    rows = jnp.arange(b)[:, None]
    tail = ctx[rows, jnp.clip(ctx_len[:, None] - n + jnp.arange(n), 0, c - 1)]  # [B, n]
    starts = jnp.arange(c - n)  # candidate match starts j: ctx[j:j+n] == tail, j + n < ctx_len
    windows = ctx[:, starts[:, None] + jnp.arange(n)]  # [B, C-n, n]
    match = jnp.all(windows == tail[:, None, :], axis=-1) & (starts[None] + n < ctx_len[:, None])
    best = jnp.max(jnp.where(match, starts[None], -1), axis=-1)  # [B], -1 = no match
    # The match's continuation, repeated with its period when it reaches the end of the text (a
    # run of one token, a short loop), instead of reading slots not written yet.
    period = jnp.maximum(ctx_len - best - n, 1)[:, None]
    follow = jnp.clip(best[:, None] + n + jnp.arange(k) % period, 0, c - 1)
    last = ctx[jnp.arange(b), jnp.maximum(ctx_len - 1, 0)]
    return jnp.where(best[:, None] >= 0, ctx[rows, follow], last[:, None]).astype(jnp.int32)


def _iteration(tp: dict, tcfg: Any, dp: dict | None, dcfg: Any | None, st: _State,
               sampler: Sampler | None, k: int, ngram: int, n_max: int, stop: Stop) -> _State:
    b = st.token.shape[0]
    rows = jnp.arange(b)
    live = ~st.done & (st.n_out < n_max)
    key, k_acc, k_next, *k_draft = (st.key,) * (k + 3) if sampler is None else jax.random.split(st.key, k + 3)

    # 1. proposals d [B, k] and their probabilities q [B, k, V] (None when all rows are greedy)
    if dp is not None:
        cache, inp, ds, qs = st.draft, st.token, [], []
        for i in range(k + 1):
            logits, cache = family_of(dcfg).forward(dp, inp[:, None], dcfg, cache)
            if i == k:  # d_k is read only to keep the draft cache level with the target's
                break
            q, q_logits, q_greedy = _dist(logits[:, 0], sampler)
            inp = _draw(k_draft[i], q, q_greedy, q_logits)
            ds.append(inp)
            qs.append(q)
        d, q = jnp.stack(ds, 1), (None if sampler is None else jnp.stack(qs, 1))
    else:
        cache = None
        d = _lookup(st.ctx, st.ctx_len, k, ngram)
        q = None if sampler is None else jax.nn.one_hot(d, tcfg.vocab_size, dtype=jnp.float32)

    # 2. the target reads the pending token and the k drafts in one pass
    t_logits, t_cache = family_of(tcfg).forward(tp, jnp.concatenate([st.token[:, None], d], 1), tcfg, st.target)
    p, p_logits, greedy = _dist(t_logits, sampler)  # [B, k+1, V], [B, k+1, V], [B, k+1]

    # 3. accept a prefix of the drafts
    ok = d == argmax(p_logits[:, :k])  # greedy rows: the draft is the target's argmax
    if greedy is not None:
        p_d = jnp.take_along_axis(p[:, :k], d[..., None], -1)[..., 0]
        q_d = jnp.take_along_axis(q, d[..., None], -1)[..., 0]
        ok = jnp.where(greedy[:, :k], ok, jax.random.uniform(k_acc, (b, k)) * q_d < p_d)
    n_acc = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)  # [B] in 0..k

    # 4. one more token: the residual after a rejection, the bonus after k acceptances
    resid, next_greedy = None, None
    if greedy is not None:
        p_next = p[rows, n_acc]
        q_next = jnp.where((n_acc < k)[:, None], q[rows, jnp.minimum(n_acc, k - 1)], 0.0)
        resid = jnp.maximum(p_next - q_next, 0.0)
        resid = jnp.where(resid.sum(-1, keepdims=True) > 0, resid, p_next)  # p == q: nothing to fix
        resid, next_greedy = resid / resid.sum(-1, keepdims=True), greedy[rows, n_acc]
    x = _draw(k_next, resid, next_greedy, p_logits[rows, n_acc])
    cand = jnp.concatenate([d, jnp.zeros((b, 1), jnp.int32)], 1).at[rows, n_acc].set(x)  # [B, k+1]
    cand_lp = jnp.take_along_axis(jax.nn.log_softmax(t_logits), cand[..., None], -1)[..., 0]
    new = _emit(st, cand, jnp.where(live, n_acc + 1, 0), cand_lp, stop, n_max)

    # 5. roll back: each cache keeps the pending token and the accepted drafts
    keep = jnp.where(live, st.held + 1 + n_acc, st.held)
    t_cache = family_of(tcfg).rollback(t_cache, keep)
    if cache is not None:
        cache = family_of(dcfg).rollback(cache, keep)
    return new.replace(target=t_cache, draft=cache, token=jnp.where(live, x, st.token), key=key, held=keep,
                       calls=st.calls + live, accepted=st.accepted + jnp.where(live, n_acc, 0))


@functools.partial(jax.jit, static_argnames=("tcfg", "dcfg", "k", "ngram", "max_new_tokens", "stop", "pad_id"))
def _speculative(tp, tcfg, dp, dcfg, prompts, lengths, key, sampler, k, ngram, max_new_tokens, stop,
                 pad_id) -> SpecResult:
    b, t = prompts.shape
    n = max_new_tokens
    capacity = t + n + k
    tfam = family_of(tcfg)
    tp = tfam.decode_params(tp, tcfg)
    t_cache, logits = tfam.prefill(tp, tcfg, prompts, lengths, capacity)
    d_cache = None
    if dp is not None:
        dfam = family_of(dcfg)
        dp = dfam.decode_params(dp, dcfg)
        d_cache, _ = dfam.prefill(dp, dcfg, prompts, lengths, capacity)
    key, k0 = jax.random.split(key)
    p, p_logits, greedy = _dist(logits, sampler)
    first = _draw(k0, p, greedy, p_logits)
    c = t + n + k + 1
    m = max((len(s) for s in stop), default=0)
    st = _State(target=t_cache, draft=d_cache, token=first, done=jnp.zeros((b,), bool),
                n_out=jnp.zeros((b,), jnp.int32), ctx=jnp.full((b, c), pad_id, jnp.int32).at[:, :t].set(prompts),
                logp=jnp.zeros((b, c), jnp.float32), ctx_len=lengths, held=lengths, window=jnp.full((b, m), -1, jnp.int32),
                key=key, calls=jnp.zeros((b,), jnp.int32), accepted=jnp.zeros((b,), jnp.int32))
    first_lp = jnp.take_along_axis(jax.nn.log_softmax(logits), first[:, None], -1)
    st = _emit(st, first[:, None], jnp.ones((b,), jnp.int32), first_lp, stop, n)

    def cond(st: _State) -> Array:
        return jnp.any(~st.done & (st.n_out < n))

    st = jax.lax.while_loop(cond, lambda s: _iteration(tp, tcfg, dp, dcfg, s, sampler, k, ngram, n, stop), st)
    idx = lengths[:, None] + jnp.arange(n)[None, :]
    real = jnp.arange(n)[None, :] < st.n_out[:, None]
    toks = jnp.where(real, jnp.take_along_axis(st.ctx, idx, 1), pad_id)
    lps = jnp.where(real, jnp.take_along_axis(st.logp, idx, 1), 0.0)
    out = Generation(tokens=toks, logprobs=lps, finished=st.done, lengths=st.n_out)
    return SpecResult(out=out, target_calls=st.calls, accepted=st.accepted, k=k)


def speculative_generate(target_params: dict, target_cfg: Any, draft_params: dict | None,
                         draft_cfg: Any | None, prompts: Any, key: Array, *, k: int = 4,
                         max_new_tokens: int, sampler: Sampler | None = None, stop: Any = None,
                         lengths: Any = None, prompt_lookup: int | None = None, pad_id: int = 0
                         ) -> SpecResult:
    """``generate`` with speculative decoding: same outputs (``.out``) plus acceptance statistics.

    Draft with a model (``draft_params``, ``draft_cfg``; same vocabulary as the target) or, with
    ``draft_params=None`` and ``prompt_lookup=n``, by n-gram lookup in the prompt and the text so
    far. ``k`` tokens are proposed per target call. Greedy (``sampler`` None) output equals greedy
    ``generate`` token for token; with sampling, the distribution is the target's.
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} (lookahead) must be an integer >= 1")
    if draft_params is None and not (isinstance(prompt_lookup, int) and prompt_lookup >= 1):
        raise ConfigError("speculative: give a draft model or prompt_lookup=n (n >= 1 tokens to match)")
    if draft_params is not None and draft_cfg.vocab_size != target_cfg.vocab_size:
        raise ConfigError(f"draft model.vocab_size={draft_cfg.vocab_size} differs from the target's "
                          f"{target_cfg.vocab_size}; speculative decoding needs one vocabulary")
    if sampler is not None and sampler.uses_history:
        raise ConfigError("speculative: repetition/presence/frequency penalties are not supported; "
                          "use temperature, top_k, top_p, min_p")
    family_of(target_cfg).require("rollback", "speculative decoding (the target)")
    if draft_params is not None:
        family_of(draft_cfg).require("rollback", "speculative decoding (the draft)")
    prompts, lengths = check_inputs(target_cfg, prompts, lengths, max_new_tokens, sampler)
    models = [target_cfg] + ([draft_cfg] if draft_params is not None else [])
    for role, c in zip(("target", "draft"), models):  # a verify pass rolls back up to k tokens
        depth = family_of(c).max_rollback(c)
        if depth is not None and k > depth:
            raise ConfigError(f"k={k}: the {role} (model.family={c.family!r}) can roll back at most {depth} "
                              f"tokens, and speculative decoding rolls back up to k; allowed k <= {depth}")
    room = min([n for n in (family_of(c).context_len(c) for c in models) if n is not None], default=None)
    need = prompts.shape[1] + max_new_tokens + k
    if room is not None and need > room:
        raise ConfigError(f"k={k}: the padded prompt ({prompts.shape[1]}) + max_new_tokens ({max_new_tokens}) "
                          f"+ k needs {need} cache slots, more than max_len={room}; allowed k <= "
                          f"{room - prompts.shape[1] - max_new_tokens}")
    return _speculative(target_params, target_cfg, draft_params, draft_cfg if draft_params is not None else None,
                        prompts, lengths, key, sampler, k, prompt_lookup or 1, max_new_tokens,
                        normalize_stop(stop), pad_id)
