"""``arlm eval``: perplexity, bits/byte and accuracy of a checkpoint on a corpus.

    arlm eval RUN_DIR [--step N] [--corpus SPEC] [--split val|train] [--batches N] [--json]
              [--mesh.fsdp 4 ...]
"""

from __future__ import annotations

import dataclasses
import json

import jsonargparse

from arlm_jax.cli.options import Source, add_mesh_options, mesh_from_args, new_parser
from arlm_jax.errors import ConfigError

NAME = "eval"
HELP = "perplexity and bits/byte of a checkpoint on a corpus"
CONFIG_OPTIONS = False


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description="Score a checkpoint on evenly spaced windows of a corpus split. "
                               "Any --mesh.* option restores it onto a device mesh and evaluates "
                               "there; without one, on one device.")
    p.add_argument("run_dir", type=str, help="the train.out_dir of a training run")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (null: the newest)")
    p.add_argument("--corpus", type=str, default=None, help="corpus spec (null: the run's data.corpus)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split to score")
    p.add_argument("--batches", type=int, default=16, help="batches of evenly spaced windows")
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch (null: the run's train.batch_size)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_mesh_options(p)
    subcommands.add_subcommand(NAME, p, help=HELP)
    return p


def run(args: jsonargparse.Namespace, source: Source) -> int:
    from arlm_jax.data import tokens as data_lib
    from arlm_jax.data.tokenizer import load_tokenizer, tokenizer_identity
    from arlm_jax.parallel.shardings import check_batch
    from arlm_jax.train.evaluate import evaluate
    from arlm_jax.train.run_dir import load_run
    from arlm_jax.train.step import make_eval_step

    if args.batches < 1:
        raise ConfigError(f"--batches={args.batches} must be > 0")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} must be > 0 (or null: the run's train.batch_size)")
    mesh = mesh_from_args(args, source)
    cfg, params, meta = load_run(args.run_dir, args.step, mesh=mesh)
    data_cfg = dataclasses.replace(cfg.data, corpus=args.corpus or cfg.data.corpus)
    enc = load_tokenizer(data_cfg.tokenizer)
    if tokenizer_identity(enc) != meta["tokenizer"]:
        raise ConfigError(f"eval: data.tokenizer={data_cfg.tokenizer!r} now loads "
                          f"{tokenizer_identity(enc)}, not the checkpoint's {meta['tokenizer']}")
    data = data_lib.build_token_cache(data_cfg, enc)
    data_lib.check_ids_below(data, cfg.model.vocab_size)
    tokens = data.val if args.split == "val" else data.train
    batch = cfg.train.batch_size if args.batch_size is None else args.batch_size
    seq = cfg.seq_len
    if mesh is not None:
        check_batch(batch, mesh, field="--batch-size")
    res = evaluate(make_eval_step(cfg.model, mesh=mesh), params, tokens, batch, seq, args.batches,
                   data.bytes_per_token, mesh=mesh)
    res |= {"step": meta["step"], "corpus": data_cfg.corpus, "split": args.split,
            "tokens_scored": batch * seq * args.batches}
    if args.json:
        print(json.dumps(res))
    else:
        print(f"step {res['step']} on {res['corpus']} ({res['split']}, {res['tokens_scored']:,} tokens): "
              f"loss {res['loss']:.4f}  perplexity {res['ppl']:.3f}  bits/byte {res['bpb']:.4f}  "
              f"accuracy {res['accuracy']:.4f}")
    return 0
