"""``arlm train``: train a model from the config the options build.

    arlm train [--preset NAME] [--config FILE] [--resume] [--model.family NAME]
               [--model.n_layers 6 --train.lr 3e-4 ...] [--coordinator HOST:PORT ...]
    arlm train --init-from RUN_DIR --train.out_dir runs/ft [--train.lr 1e-4 ...]   # fine-tune

With no arguments: the default family's default preset (the CPU demo) on the running
Python's standard library with the byte tokenizer. ``model.vocab_size`` follows the tokenizer
unless it is given (on the command line or in the config file).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jsonargparse

from arlm_jax.cli.options import Source, add_config_options, build_run, new_parser
from arlm_jax.errors import ConfigError

NAME = "train"
HELP = "train a model (default: the CPU demo on the standard library)"
CONFIG_OPTIONS = True


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description="Train a model. With no arguments: the demo preset on the running "
                               "Python's standard library with the byte tokenizer.")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in train.out_dir from its newest intact checkpoint")
    p.add_argument("--resume-step", type=int, default=None, metavar="N",
                   help="continue from checkpoint N (implies --resume); newer checkpoints are moved to "
                        "out_dir/set_aside/, not deleted")
    p.add_argument("--init-from", type=str, default=None, metavar="RUN_DIR",
                   help="fine-tune: start from the newest checkpoint's params of this run folder (e.g. "
                        "arlm convert --from-hf's), with its model config and tokenizer unless options "
                        "here change them; sets train.init_from")
    add_distributed_options(p)
    add_config_options(p, source)
    subcommands.add_subcommand(NAME, p, help=HELP)
    return p


def add_distributed_options(p: jsonargparse.ArgumentParser) -> None:
    """``--distributed``, ``--coordinator``, ``--num-processes``, ``--process-id`` and
    ``--distributed-timeout`` (``arlm train``, ``arlm scaling run``); ``join(args)`` uses them."""
    g = p.add_argument_group("multi-process runs (every process runs the same command; docs/scale-out.md)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run found from the cluster's environment (TPU pod "
                        "slice, SLURM, Open MPI)")
    g.add_argument("--coordinator", type=str, default=None, metavar="HOST:PORT",
                   help="process 0's address (null: $JAX_COORDINATOR_ADDRESS; TPU pods, SLURM "
                        "and Open MPI are detected without it)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="processes in the run (null: $JAX_NUM_PROCESSES, else 1)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process, 0..N-1 (null: $JAX_PROCESS_ID)")
    g.add_argument("--distributed-timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for the coordinator and the other processes")


def join(args: jsonargparse.Namespace) -> bool:
    """Join the multi-process run the options (or the cluster's environment) describe; -> True
    when there are several processes."""
    from arlm_jax.parallel import distributed
    return distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                  auto=args.distributed, timeout=args.distributed_timeout)


def run(args: jsonargparse.Namespace, source: Source) -> int:
    from arlm_jax.data.tokenizer import load_tokenizer
    from arlm_jax.train.loop import train

    cfg, explicit = build_run(args, source)
    if args.init_from:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=args.init_from))
    multi = join(args)
    try:
        enc = load_tokenizer(cfg.data.tokenizer)
        if "model.vocab_size" not in explicit:  # the vocabulary follows the tokenizer unless set
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=enc.n_vocab))
        train(cfg, resume=args.resume, enc=enc, resume_step=args.resume_step)
    except BaseException as err:
        if not multi:
            raise
        leave_now(err)
    return 0


def leave_now(err: BaseException) -> None:
    """A process of a multi-process run that fails must leave at once: a normal exit waits in
    JAX's shutdown barrier (minutes) while the other processes hang in their next collective."""
    import traceback

    import jax

    from arlm_jax.train.stop import Interrupted
    if isinstance(err, Interrupted):
        print(f"arlm (process {jax.process_index()}): {err}", file=sys.stderr, flush=True)
    elif isinstance(err, ConfigError | RuntimeError):
        print(f"arlm: error (process {jax.process_index()}): {err}", file=sys.stderr, flush=True)
    else:
        traceback.print_exc()
    sys.stdout.flush()
    os._exit(err.exit_code if isinstance(err, Interrupted) else 2 if isinstance(err, ConfigError) else 1)
