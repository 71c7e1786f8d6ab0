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
    import json

    import jax
    import jax.numpy as jnp
    import optax

    from arlm_jax.checkpoint import Checkpointer
    from arlm_jax.config import DataConfig, RunConfig, TrainConfig, to_dict
    from arlm_jax.convert import arpa
    from arlm_jax.data.tokenizer import load_tokenizer, tokenizer_identity
    from arlm_jax.files import atomic_write_text
    from arlm_jax.train.step import TrainState

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"arpa import: out_dir {args.out_dir!r} is not empty; choose a new folder")
    enc = load_tokenizer(args.tokenizer)
    params, cfg = arpa.read(args.file, enc.n_vocab)
    run = RunConfig(preset="demo", model=cfg, train=TrainConfig(out_dir=str(out), steps=1),
                    data=DataConfig(tokenizer=args.tokenizer)).validate()
    params = jax.tree.map(jnp.asarray, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optax.identity().init(params))
    out.mkdir(parents=True, exist_ok=True)
    with Checkpointer(out, 1) as ck:
        ck.save(0, state, {"step": 0, "data": {"seed": 0, "next_batch": 0}, "config": to_dict(run),
                           "tokenizer": tokenizer_identity(enc)})
    atomic_write_text(out / "config.json", json.dumps(to_dict(run), indent=1) + "\n")
    print(f"imported {args.file} ({cfg.order}-gram, {sum(cfg.sizes):,} n-grams, vocab {cfg.vocab_size}) into "
          f"{out}: arlm eval {out}, arlm generate --checkpoint {out}")
    return 0
