"""``arlm generate``: text from a checkpoint, streamed as it is produced.

    arlm generate --checkpoint RUN_DIR --prompt "def " [--max-new-tokens 200] [--temperature 0.8
        --top-k 50 --top-p 0.95 --min-p 0.05 --repetition-penalty 1.1 --presence-penalty 0
        --frequency-penalty 0] [--num-samples 4] [--beams 4] [--stop "\\n\\n"] [--seed 0]
    arlm generate --checkpoint RUN_DIR --prompts-file prompts.txt     # one prompt per line
    arlm generate --checkpoint RUN_DIR --draft-checkpoint SMALL_RUN --lookahead 4 --prompt ...
    arlm generate --checkpoint RUN_DIR --prompt-lookup 3 --prompt ...  # speculative, no draft model
    arlm generate --checkpoint RUN_DIR --mesh.tensor 4 --prompt ...    # sharded over 4 devices

One prompt and one sample stream to stdout in chunks of ``--chunk`` tokens (every chunk reuses
one compiled program); a batch (several prompts or samples) prints each row when all are done.
Generation stops at <|endoftext|> and at every ``--stop`` text (matched as the token sequence
the tokenizer gives that text; exact with the byte tokenizer). Any ``--mesh.*`` option restores
the checkpoint onto a device mesh (parallel/rules.py's rule table: weights over fsdp and tensor, the
KV cache's rows over data x fsdp and its heads over tensor) and decodes there, for a model that
does not fit one device; without one, everything runs on one device.
"""

from __future__ import annotations

import codecs
import contextlib
import sys
from pathlib import Path

import jsonargparse

from arlm_jax.cli.options import Source, add_mesh_options, mesh_from_args, new_parser
from arlm_jax.errors import ConfigError

NAME = "generate"
HELP = "generate text from a checkpoint (sampling or beam search)"
CONFIG_OPTIONS = False


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description=__doc__.split("\n\n")[2].replace("\n", " "))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", type=str, help="the prompt text (escapes such as \\n are read as written)")
    src.add_argument("--prompts-file", type=str, help="a text file with one prompt per line (a batch)")
    p.add_argument("--checkpoint", type=str, required=True, help="the train.out_dir of a training run")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (null: the newest)")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate per row")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--min-p", type=float, default=None, help="drop tokens below min-p x the top probability")
    p.add_argument("--repetition-penalty", type=float, default=None, help="CTRL penalty, > 1 discourages repeats")
    p.add_argument("--presence-penalty", type=float, default=None, help="subtracted once per seen token")
    p.add_argument("--frequency-penalty", type=float, default=None, help="subtracted per occurrence")
    p.add_argument("--beams", type=int, default=None, help="beam search with this width (ignores sampling flags)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (with --beams: best beams shown)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log p / length ** this")
    p.add_argument("--draft-checkpoint", type=str, default=None,
                   help="speculative decoding: a smaller model's run folder (same tokenizer) drafts tokens")
    p.add_argument("--prompt-lookup", type=int, default=None,
                   help="speculative decoding without a draft model: match the last N tokens in the text so far")
    p.add_argument("--lookahead", type=int, default=4, help="tokens drafted per target call (speculative)")
    p.add_argument("--stop", action="append", default=[], help="stop text (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--chunk", type=int, default=8, help="tokens per streamed chunk")
    p.add_argument("--window-keep", type=int, default=None,
                   help="past the context, a full window restarts from its last N tokens (default: the "
                        "whole context, as nanoGPT crops; smaller refills less often)")
    add_mesh_options(p)
    subcommands.add_subcommand(NAME, p, help=HELP)
    return p


def _unescape(text: str) -> str:
    """Read backslash escapes (\\n, \\t, \\\\) as the characters they name."""
    try:
        return codecs.decode(text.encode("utf-8"), "unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError) as err:
        raise ConfigError(f"bad backslash escape in {text!r}; write a literal backslash as \\\\") from err


def _prompts(args: jsonargparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return [_unescape(args.prompt)]
    path = Path(args.prompts_file)
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--prompts-file={str(path)!r} cannot be read ({type(err).__name__})") from err
    if not lines:
        raise ConfigError(f"--prompts-file={str(path)!r} holds no prompt (one per line)")
    return [_unescape(ln) for ln in lines]


def _sampler(args: jsonargparse.Namespace):
    from arlm_jax.decode.sampling import Sampler
    return Sampler(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                   repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                   frequency_penalty=args.frequency_penalty).validate()


class _TextStream:
    """Token ids -> text, holding back bytes of a UTF-8 character that is not complete yet."""

    def __init__(self, enc):
        self.enc = enc
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, ids: list[int], final: bool = False) -> str:
        from arlm_jax.data.tokenizer import token_bytes
        data = token_bytes(self.enc, ids)
        return self.dec.decode(data, final=final)


def _text(enc, ids) -> str:
    """Text of generated ids, without the end-of-text token."""
    from arlm_jax.data.tokenizer import eot_id
    end = eot_id(enc)
    return _TextStream(enc)([int(t) for t in ids if int(t) != end], final=True)


def _print_rows(enc, texts: list[str], tokens, lengths, num_samples: int) -> None:
    """Each row's prompt and continuation; a header per row when there are several."""
    for r in range(tokens.shape[0]):
        if tokens.shape[0] > 1:
            print(f"--- prompt {r // num_samples + 1}, sample {r % num_samples + 1} ---")
        print(texts[r // num_samples] + _text(enc, tokens[r, :int(lengths[r])]))


def run(args: jsonargparse.Namespace, source: Source) -> int:
    import jax

    from arlm_jax.data.tokenizer import encode, eot_id, load_tokenizer, tokenizer_identity
    from arlm_jax.train.run_dir import load_run

    for name in ("num_samples", "chunk", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.beams is not None and args.beams < 1:
        raise ConfigError(f"--beams={args.beams} must be >= 1 (the beam width; omit it to sample)")
    if args.beams is not None and not 1 <= args.num_samples <= args.beams:
        raise ConfigError(f"--num-samples={args.num_samples} must be in 1..--beams={args.beams} with beam search")
    texts = _prompts(args)
    sampler = None if args.beams is not None else _sampler(args)
    mesh = mesh_from_args(args, source)
    saved, params, meta = load_run(args.checkpoint, args.step, mesh=mesh)
    enc = load_tokenizer(saved.data.tokenizer)
    if tokenizer_identity(enc) != meta["tokenizer"]:
        raise ConfigError(f"generate: data.tokenizer={saved.data.tokenizer!r} now loads "
                          f"{tokenizer_identity(enc)}, not the checkpoint's {meta['tokenizer']}")
    stop = [[eot_id(enc)]] + [encode(enc, _unescape(s)) for s in args.stop if s]
    ids = [encode(enc, t) for t in texts]
    if any(not p for p in ids):
        raise ConfigError("--prompt: empty prompt; give at least one character")
    key = jax.random.key(args.seed)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        return _decode_and_print(args, saved, params, meta, enc, texts, ids, stop, key, sampler, mesh)


def _decode_and_print(args, run, params, meta, enc, texts, ids, stop, key, sampler, mesh) -> int:
    from arlm_jax.decode.beam import beam_search
    from arlm_jax.decode.generate import generate, stream
    from arlm_jax.decode.inputs import pad_prompts
    from arlm_jax.data.tokenizer import eot_id
    from arlm_jax.models import family_of

    cfg = run.model
    ctx = family_of(cfg).context_len(cfg)
    # Beam search and speculative decoding need room for every new token in the context; plain
    # sampling slides its window past it, so its prompts are only cropped to the context.
    room = None if ctx is None else ctx - args.max_new_tokens + 1
    if args.beams is not None:
        toks, lens = pad_prompts(ids, max_len=room)
        res = beam_search(params, cfg, toks, beams=args.beams, max_new_tokens=args.max_new_tokens,
                          n_best=args.num_samples, length_penalty=args.length_penalty,
                          stop=[s[0] for s in stop if len(s) == 1], lengths=lens)
        for r, text in enumerate(texts):
            for j in range(args.num_samples):
                n = int(res.lengths[r, j])
                print(f"--- prompt {r + 1}, beam {j + 1}, score {float(res.scores[r, j]):.4f} ---")
                print(text + _text(enc, res.tokens[r, j, :n]))
        return 0

    rows = [p for p in ids for _ in range(args.num_samples)]
    if args.draft_checkpoint is not None or args.prompt_lookup is not None:
        toks, lens = pad_prompts(rows, max_len=room)
        return _speculative(args, run, params, enc, meta, texts, toks, lens, key, sampler, stop, mesh)
    if ctx is not None:  # the last ctx tokens of a longer prompt, as nanoGPT crops
        rows = [p[-ctx:] for p in rows]
    toks, lens = pad_prompts(rows, max_len=ctx)
    slide = {"window_keep": args.window_keep}
    if len(rows) == 1:  # stream
        out = _TextStream(enc)
        sys.stdout.write(texts[0])
        sys.stdout.flush()
        shown = 0
        for chunk, n_out, _ in stream(params, cfg, toks, key, max_new_tokens=args.max_new_tokens,
                                      sampler=sampler, stop=stop, lengths=lens, chunk=args.chunk, **slide):
            real = chunk[0, :int(n_out[0]) - shown].tolist()
            shown += len(real)
            sys.stdout.write(out([t for t in real if t != eot_id(enc)]))
            sys.stdout.flush()
        sys.stdout.write(out([], final=True) + "\n")
        return 0
    res = generate(params, cfg, toks, key, max_new_tokens=args.max_new_tokens, sampler=sampler,
                   stop=stop, lengths=lens, **slide)
    _print_rows(enc, texts, res.tokens, res.lengths, args.num_samples)
    return 0


def _speculative(args, run, params, enc, meta, texts, toks, lens, key, sampler, stop, mesh) -> int:
    from arlm_jax.decode.speculative import speculative_generate
    from arlm_jax.train.run_dir import load_run

    draft_params, draft_cfg = None, None
    if args.draft_checkpoint is not None:
        draft_run, draft_params, draft_meta = load_run(args.draft_checkpoint, mesh=mesh)
        if draft_meta["tokenizer"] != meta["tokenizer"]:
            raise ConfigError(f"--draft-checkpoint: its tokenizer ({draft_meta['tokenizer']}) is not the "
                              f"target's ({meta['tokenizer']})")
        draft_cfg = draft_run.model
    res = speculative_generate(params, run.model, draft_params, draft_cfg, toks, key, k=args.lookahead,
                               max_new_tokens=args.max_new_tokens, sampler=sampler, stop=stop, lengths=lens,
                               prompt_lookup=args.prompt_lookup)
    _print_rows(enc, texts, res.out.tokens, res.out.lengths, args.num_samples)
    print(f"speculative: acceptance rate {float(res.acceptance_rate.mean()):.3f}, "
          f"{float(res.tokens_per_call.mean()):.2f} tokens per target call (lookahead {args.lookahead})",
          file=sys.stderr)
    return 0
