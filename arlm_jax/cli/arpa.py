"""``arlm arpa``: n-gram runs to and from ARPA files (KenLM, SRILM).

    arlm arpa export RUN_DIR FILE [--step N]          an ngram run's checkpoint -> ARPA
    arlm arpa import FILE OUT_DIR [--tokenizer byte]  ARPA -> a run folder eval/generate read

Words are decimal token ids of the run's tokenizer (convert/arpa.py).
"""

from __future__ import annotations

from pathlib import Path

import jsonargparse

from arlm_jax.cli.options import Source, new_parser
from arlm_jax.errors import ConfigError

NAME = "arpa"
HELP = "export an ngram run to an ARPA file, or import one"
CONFIG_OPTIONS = False


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description="ARPA files of n-gram models (KenLM, SRILM); words are token ids.")
    subcommands.add_subcommand(NAME, p, help=HELP)  # before its own subcommands (as tokenizer.py)
    e = new_parser(description="Write an ngram run's checkpoint as an ARPA file.")
    e.add_argument("run_dir", type=str, help="the train.out_dir of an ngram run")
    e.add_argument("file", type=str, help="the ARPA file to write")
    e.add_argument("--step", type=int, default=None, help="checkpoint step (null: the newest)")
    i = new_parser(description="Read an ARPA file (token-id words) into a run folder that arlm eval "
                               "and arlm generate read.")
    i.add_argument("file", type=str, help="the ARPA file to read")
    i.add_argument("out_dir", type=str, help="the run folder to create")
    i.add_argument("--tokenizer", type=str, default="byte", help="the tokenizer whose ids the file's words are")
    subs = p.add_subcommands(dest="arpa_command", required=True)
    subs.add_subcommand("export", e, help="an ngram run's checkpoint -> ARPA")
    subs.add_subcommand("import", i, help="ARPA -> a run folder")
    return p


def run(args: jsonargparse.Namespace, source: Source) -> int:
    return {"export": _export, "import": _import}[args.arpa_command](args[args.arpa_command])


def _export(args: jsonargparse.Namespace) -> int:
    from arlm_jax.convert import arpa
    from arlm_jax.train.run_dir import load_run

    out = Path(args.file)
    if not out.parent.is_dir():
        raise ConfigError(f"arpa export: folder {str(out.parent)!r} of {args.file!r} does not exist")
    run, params, meta = load_run(args.run_dir, args.step)
    if run.model.family != "ngram":
        raise ConfigError(f"arpa export: {args.run_dir!r} holds a model.family={run.model.family!r} run; "
                          f"only ngram runs export to ARPA")
    arpa.write(out, params, run.model)
    print(f"wrote step {meta['step']} of {args.run_dir} ({run.model.order}-gram, "
          f"{sum(run.model.sizes):,} n-grams) to {out}")
    return 0


def _import(args: jsonargparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from arlm_jax.convert import arpa
    from arlm_jax.data.tokenizer import load_tokenizer
    from arlm_jax.train.run_dir import write_model_run

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"arpa import: out_dir {args.out_dir!r} is not empty; choose a new folder")
    enc = load_tokenizer(args.tokenizer)
    params, cfg = arpa.read(args.file, enc.n_vocab)
    write_model_run(out, jax.tree.map(jnp.asarray, params), cfg, args.tokenizer, enc, f"arpa:{args.file}")
    print(f"imported {args.file} ({cfg.order}-gram, {sum(cfg.sizes):,} n-grams, vocab {cfg.vocab_size}) into "
          f"{out}: arlm eval {out}, arlm generate --checkpoint {out}")
    return 0
