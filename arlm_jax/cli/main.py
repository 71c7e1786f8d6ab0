"""The ``arlm`` command: the top-level parser, dispatch to one module per subcommand, and errors.

    arlm train [--preset NAME] [--config FILE] [--resume] [--model.n_layers 6 --train.lr 3e-4 ...]
    arlm train --init-from RUN_DIR --train.out_dir runs/ft [--train.steps 200 ...]
    arlm eval RUN_DIR [--step N] [--corpus SPEC] [--split val|train] [--batches N] [--json]
    arlm generate --checkpoint RUN_DIR --prompt TEXT [--temperature T --top-p P --beams W ...]
    arlm tokenizer train --vocab-size N [--corpus SPEC] [--pattern gpt2|cl100k] [--out FILE]
    arlm arpa export RUN_DIR FILE | arlm arpa import FILE OUT_DIR [--tokenizer byte]
    arlm convert --from-hf HF_DIR --out RUN_DIR | arlm convert --to-hf RUN_DIR --out HF_DIR
    arlm plan [--preset NAME] --devices N [--mesh.fsdp 8 --mesh.tensor 8 ...] [--json]
    arlm info [--preset NAME] [--config FILE] [--model.family NAME] [--model.* ...]
    arlm scaling plan --budgets C1,C2 --out DIR | arlm scaling run DIR [--shard I/N] | arlm scaling fit CSV

Configuration is layered: dataclass defaults, then ``--preset`` (a preset of the family that
``--model.family`` names), then ``--config`` (a JSON or TOML file with ``model``/``train``/
``data``/``mesh`` sections, e.g. a run's ``config.json``), then ``--section.field value``
options. Parsing is jsonargparse's (options.py). Bad input exits with status 2 and one line,
``arlm: error: ...``, naming the option and what it allows. Compiled programs are kept on disk
between runs (compile_cache.py).
"""

from __future__ import annotations

import sys

import jsonargparse

from arlm_jax.cli import eval as eval_command
from arlm_jax.cli import arpa, compile_cache, convert, generate, info, plan, scaling, tokenizer, train
from arlm_jax.cli.errors import describe
from arlm_jax.cli.options import Source, first_pass, new_parser, yaml_spelling
from arlm_jax.errors import ConfigError, ResourceError, known_failure
from arlm_jax.train.stop import Interrupted

# Each module: NAME, HELP, CONFIG_OPTIONS, add_parser(subcommands, source), run(args, source).
COMMANDS = {m.NAME: m for m in (train, eval_command, generate, tokenizer, arpa, convert, plan, info, scaling)}


def make_parser(source: Source) -> tuple[jsonargparse.ArgumentParser, dict]:
    """The ``arlm`` parser, and each subcommand's parser by name (config options per ``source``)."""
    parser = new_parser(prog="arlm", description="Autoregressive language models in JAX.")
    subcommands = parser.add_subcommands(dest="command", required=True)
    return parser, {name: m.add_parser(subcommands, source) for name, m in COMMANDS.items()}


def parse(argv: list[str]) -> tuple[str, jsonargparse.Namespace, Source]:
    """(subcommand, its parsed arguments, what the first pass found) of a command line; a
    ConfigError of one line for bad input."""
    command = COMMANDS.get(argv[0]) if argv else None
    source = first_pass(argv[1:], config_options=getattr(command, "CONFIG_OPTIONS", False))
    parser, parsers = make_parser(source)
    try:
        args = parser.parse_args(yaml_spelling(argv, source))
    except jsonargparse.ArgumentError as err:
        raise ConfigError(describe(str(err), parsers.get(argv[0] if argv else ""))) from None
    return args.command, args[args.command], source


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        name, args, source = parse(argv)
        compile_cache.enable()
        return COMMANDS[name].run(args, source)
    except ConfigError as err:  # bad input (2), or a resource that failed (1)
        print(f"arlm: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, ResourceError) else 2
    except Interrupted as err:  # SIGTERM / SIGINT during training: saved, then stopped
        print(f"arlm: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a diverged run, or out of device memory: one line, not a traceback
        if (line := known_failure(err)) is None:
            raise
        print(f"arlm: error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
