"""``arlm tokenizer train``: train a byte-level BPE and save it as a .tiktoken file.

    arlm tokenizer train --vocab-size N [--corpus SPEC] [--pattern gpt2|cl100k] [--out FILE]
"""

from __future__ import annotations

import time
from pathlib import Path

import jsonargparse

from arlm_jax.cli.options import Source, new_parser
from arlm_jax.errors import ConfigError

NAME = "tokenizer"
HELP = "tokenizer tools"
CONFIG_OPTIONS = False


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    """The ``tokenizer`` parser and its ``train`` subcommand (returned: its options are the
    ones a typo is compared with)."""
    p = new_parser(description="Tokenizer tools.")
    subcommands.add_subcommand(NAME, p, help=HELP)  # before its own subcommands: jsonargparse adds levels in order
    t = new_parser(description="Train a byte-level BPE on a corpus; use it with --data.tokenizer FILE.")
    t.add_argument("--vocab-size", type=int, required=True, help="ids in total, <|endoftext|> included")
    t.add_argument("--corpus", type=str, default="stdlib", help="corpus spec: stdlib, a file, a folder or a glob")
    t.add_argument("--pattern", choices=("gpt2", "cl100k"), default="gpt2", help="pre-tokeniser regex")
    t.add_argument("--out", type=str, default=None, help="output path (null: bpe<N>.tiktoken)")
    p.add_subcommands(dest="tokenizer_command", required=True).add_subcommand(
        "train", t, help="train a byte-level BPE, saved as a .tiktoken file")
    return t


def run(args: jsonargparse.Namespace, source: Source) -> int:
    return {"train": _train}[args.tokenizer_command](args[args.tokenizer_command])


def _train(args: jsonargparse.Namespace) -> int:
    from arlm_jax.data.tokenizer import save_tiktoken, train_bpe
    from arlm_jax.data.tokens import iter_documents

    out = Path(args.out or f"bpe{args.vocab_size}.tiktoken")
    if not out.parent.is_dir():
        raise ConfigError(f"--out={str(out)!r}: folder {str(out.parent)!r} does not exist")
    t0 = time.perf_counter()
    enc = train_bpe((text for _, text in iter_documents(args.corpus)), args.vocab_size,
                    pattern=args.pattern, name=out.stem)
    seconds = time.perf_counter() - t0
    save_tiktoken(enc, out)
    print(f"trained a {enc.n_vocab}-token BPE on {args.corpus} in {seconds:.1f}s -> {out} "
          f"(use it with --data.tokenizer {out})")
    return 0
