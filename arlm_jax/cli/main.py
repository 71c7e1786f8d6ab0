"""The ``arlm`` command: parses arguments, builds configs and calls the library.

    arlm train [--preset NAME] [--config FILE] [--resume] [--model.n_layers 6 --train.lr 3e-4 ...]
    arlm eval RUN_DIR [--step N] [--corpus SPEC] [--split val|train] [--batches N] [--json]
    arlm generate --checkpoint RUN_DIR --prompt TEXT [--temperature T --top-p P --beams W ...]
    arlm tokenizer train --vocab-size N [--corpus SPEC] [--pattern gpt2|cl100k] [--out FILE]
    arlm plan [--preset NAME] --devices N [--mesh.fsdp 8 --mesh.tensor 8 ...] [--json]
    arlm info [--preset NAME] [--config FILE] [--model.* ...]

Configuration is layered: dataclass defaults, then ``--preset`` (model shapes), then
``--config`` (a JSON or TOML file with ``model``/``train``/``data``/``mesh`` sections, e.g. a run's
``config.json``), then ``--section.field value`` flags. Bad input exits with status 2 and one
line, ``arlm: error: ...``, naming the option and what it allows.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import os
import re
import sys
import time
import tomllib
import typing
from pathlib import Path

from arlm_jax.cli import generate as cli_generate
from arlm_jax.config import (ConfigError, DataConfig, MeshConfig,
                             RunConfig, TrainConfig, from_dict, model_preset, to_dict)

from arlm_jax.models.transformer.config import PRESETS as MODEL_PRESETS, TransformerConfig as ModelConfig

SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "mesh": MeshConfig}


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


# ---- --section.field options, generated from the dataclasses -----------------------------------
_FIELD_COMMENT = re.compile(r"^\s+(\w+): [^=\n]+= [^#\n]+#(.*)$", re.M)


def _field_help(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field in the class source: one help text per option."""
    try:
        return {m[1]: m[2].strip() for m in _FIELD_COMMENT.finditer(inspect.getsource(cls))}
    except (OSError, TypeError):
        return {}


def _converter(type_str: str):
    """str -> value for a field annotated ``type_str`` ('int', 'float | None', 'bool', ...)."""
    optional = "None" in type_str
    base = type_str.replace("| None", "").strip()

    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            if base == "bool":
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return {"int": int, "float": float, "str": str}[base](text)
        except ValueError:
            allowed = "true or false" if base == "bool" else f"an {base}" if base == "int" else f"a {base}"
            # argparse turns this into "argument --section.field: 'text' is not an int"
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}{' or none' if optional else ''}") from None
    return convert


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"model shape preset: {', '.join(MODEL_PRESETS)} (default: demo)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="JSON or TOML file with model/train/data/mesh sections (e.g. a run's config.json)")
    for section in SECTIONS:
        _add_section_options(parser, section)


def _add_section_options(parser: argparse.ArgumentParser, section: str, title: str | None = None) -> None:
    """--section.field for every field of one config section (value None when not given)."""
    cls = SECTIONS[section]
    group = parser.add_argument_group(title or f"{section} options")
    helps = _field_help(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        type_str = str(f.type)
        default = getattr(defaults, f.name)
        group.add_argument(f"--{section}.{f.name}", dest=f"{section}.{f.name}", default=None, metavar="V",
                           type=_converter(type_str),
                           help=f"{helps.get(f.name, '')} [{type_str}, default {default!r}]".lstrip())


def mesh_from_args(args: argparse.Namespace):
    """The mesh the --mesh.* options ask for, or None when none is given (one device)."""
    given = {name.split(".", 1)[1]: v for name, v in vars(args).items() if name.startswith("mesh.") and v is not None}
    if not given:
        return None
    from arlm_jax.parallel.mesh import mesh_of
    return mesh_of(MeshConfig(**given).validate())


def _read_config_file(path: str) -> dict:
    p = Path(path)
    try:
        text = p.read_text()
        return tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except OSError as err:
        raise ConfigError(f"--config={path!r} cannot be read ({err.strerror})") from None
    except ValueError as err:
        raise ConfigError(f"--config={path!r} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: "
                          f"{str(err).splitlines()[0]}") from None


def build_run(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    """The RunConfig of parsed args (preset -> file -> flags) and the options set explicitly."""
    base: dict = {"preset": "demo"}
    if args.config:
        base = {"preset": "demo", **_read_config_file(args.config)}
    if args.preset:
        base["preset"] = args.preset
    preset = model_preset(base["preset"])
    model = to_dict(preset) | base.get("model", {})
    data = {"preset": base["preset"], "model": model,
            **{s: base.get(s, {}) for s in SECTIONS if s != "model"}}
    explicit = {f"{s}.{k}" for s in SECTIONS for k in base.get(s, {})}
    for name, value in vars(args).items():
        if "." in name and value is not None:
            section, key = name.split(".", 1)
            data[section] = {**data[section], key: value}
            explicit.add(name)
    return from_dict(data).validate(), explicit


# ---- subcommands -------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from arlm_jax.parallel import distributed
    from arlm_jax.data.tokenizer import load_tokenizer
    from arlm_jax.train.loop import train
    run, explicit = build_run(args)
    multi = distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   auto=args.distributed, timeout=args.distributed_timeout)
    try:
        enc = load_tokenizer(run.data.tokenizer)
        if "model.vocab_size" not in explicit:  # the vocabulary follows the tokenizer unless set
            run = dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=enc.n_vocab))
        train(run, resume=args.resume, enc=enc)
    except BaseException as err:
        if not multi:
            raise
        # A process that fails must leave at once: a normal exit waits in JAX's shutdown barrier
        # (minutes) while the other processes hang in their next collective.
        import traceback

        import jax
        if isinstance(err, ConfigError | RuntimeError):
            print(f"arlm: error (process {jax.process_index()}): {err}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
        sys.stdout.flush()
        os._exit(2 if isinstance(err, ConfigError) else 1)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from arlm_jax.data import tokens as data_lib
    from arlm_jax.parallel.shardings import check_batch
    from arlm_jax.data.tokenizer import load_tokenizer, tokenizer_identity
    from arlm_jax.train.step import make_eval_step
    from arlm_jax.train.evaluate import evaluate
    from arlm_jax.train.run_dir import load_run
    if args.batches < 1:
        raise ConfigError(f"--batches={args.batches} must be > 0")
    mesh = mesh_from_args(args)
    run, params, meta = load_run(args.run_dir, args.step, mesh=mesh)
    data_cfg = dataclasses.replace(run.data, corpus=args.corpus or run.data.corpus)
    enc = load_tokenizer(data_cfg.tokenizer)
    if tokenizer_identity(enc) != meta["tokenizer"]:
        raise ConfigError(f"eval: data.tokenizer={data_cfg.tokenizer!r} now loads "
                          f"{tokenizer_identity(enc)}, not the checkpoint's {meta['tokenizer']}")
    data = data_lib.build_token_cache(data_cfg, enc)
    tokens = data.val if args.split == "val" else data.train
    batch, seq = args.batch_size or run.train.batch_size, run.seq_len
    if mesh is not None:
        check_batch(batch, mesh, field="--batch-size")
    res = evaluate(make_eval_step(run.model, mesh=mesh), params, tokens, batch, seq, args.batches,
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


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from arlm_jax.data.tokens import iter_documents
    from arlm_jax.data.tokenizer import save_tiktoken, train_bpe
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


def cmd_info(args: argparse.Namespace) -> int:
    import jax
    from arlm_jax.analysis.flops import flops_per_token, param_count
    from arlm_jax.models import family_of
    run, _ = build_run(args)
    cfg = run.model
    n = param_count(jax.eval_shape(lambda k: family_of(cfg).init(k, cfg), jax.random.key(0)))
    fpt = flops_per_token(cfg, run.seq_len)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.process_count()} process(es)")
    for d in jax.devices():
        print(f"  device {d.id}: {d.device_kind} ({d.platform})")
    print(f"preset {run.preset}: {n:,} parameters ({n / 1e6:.1f}M), {cfg.n_layers} layers, "
          f"d_model {cfg.d_model}, {cfg.n_heads} heads / {cfg.kv_heads} kv heads, vocab {cfg.vocab_size}")
    print(f"FLOPs per token at T={run.seq_len}: train {fpt:.4g} (6N + 12LDT), forward {fpt / 3:.4g}")
    print(f"float32 params + AdamW moments: {16 * n / 2**30:.2f} GiB")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    run, _ = build_run(args)
    sizes = (run.mesh.data, run.mesh.fsdp, run.mesh.tensor)
    n = args.devices or (0 if -1 in sizes else sizes[0] * sizes[1] * sizes[2])
    if n < 1:
        raise ConfigError("plan: give --devices N (how many chips to plan for) when a mesh size is -1")
    from arlm_jax.analysis import plan as plan_lib  # imports jax; the device count is set first
    devices = plan_lib.simulate_devices(n)
    result = plan_lib.plan(run, devices, decode_batch=args.decode_batch, decode_len=args.decode_len)
    print(json.dumps(result, indent=1) if args.json else plan_lib.format_plan(result))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="arlm", description="Autoregressive language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (default: the CPU demo on the standard library)",
                       description="Train a model. With no arguments: the demo preset on the running "
                                   "Python's standard library with the byte tokenizer.")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in train.out_dir from its newest checkpoint")
    g = p.add_argument_group("multi-process runs (every process runs the same command; "
                             "docs/scale-out.md)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run found from the cluster's environment (TPU pod "
                        "slice, SLURM, Open MPI)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address (default: $JAX_COORDINATOR_ADDRESS; TPU pods, SLURM "
                        "and Open MPI are detected without it)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="processes in the run (default: $JAX_NUM_PROCESSES, else 1)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process, 0..N-1 (default: $JAX_PROCESS_ID)")
    g.add_argument("--distributed-timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for the coordinator and the other processes")
    _add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="perplexity and bits/byte of a checkpoint on a corpus")
    p.add_argument("run_dir", help="the train.out_dir of a training run")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--corpus", default=None, help="corpus spec (default: the run's data.corpus)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split to score")
    p.add_argument("--batches", type=int, default=16, help="batches of evenly spaced windows")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's train.batch_size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_section_options(p, "mesh", "mesh options (evaluate sharded; default: one device)")
    p.set_defaults(func=cmd_eval)

    p = cli_generate.add_parser(sub)
    _add_section_options(p, "mesh", "mesh options (decode sharded; default: one device)")

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, parser_class=_Parser)
    t = tsub.add_parser("train", help="train a byte-level BPE, saved as a .tiktoken file")
    t.add_argument("--vocab-size", type=int, required=True, help="ids in total, <|endoftext|> included")
    t.add_argument("--corpus", default="stdlib", help="corpus spec: stdlib, a file, a folder or a glob")
    t.add_argument("--pattern", choices=("gpt2", "cl100k"), default="gpt2", help="pre-tokeniser regex")
    t.add_argument("--out", default=None, help="output path (default: bpe<N>.tiktoken)")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("plan", help="per-device memory, FLOPs and fit of a config on a mesh, "
                                    "compiled ahead of time on simulated devices",
                       description="Plan a run without its hardware: compile the train step and the "
                                   "decode step for --devices simulated CPU devices laid out as "
                                   "--mesh.*, from abstract inputs, and print per-device memory, "
                                   "FLOPs per step and whether it fits TPU v5e/v5p, H100, H200. "
                                   "Example: arlm plan --preset llama-7b --devices 64 --mesh.fsdp 8 "
                                   "--mesh.tensor 8 --model.dtype bfloat16 --model.remat full")
    p.add_argument("--devices", type=int, default=0, metavar="N",
                   help="chips to plan for (default: the product of the mesh sizes)")
    p.add_argument("--decode-batch", type=int, default=1, metavar="B", help="rows of the decode step")
    p.add_argument("--decode-len", type=int, default=None, metavar="S",
                   help="KV-cache slots of the decode step (default: model.max_len)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_config_options(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("info", help="devices, parameter count and FLOPs per token of a config")
    _add_config_options(p)
    p.set_defaults(func=cmd_info)
    return parser


def _check_unknown(parser: argparse.ArgumentParser, extra: list[str]) -> None:
    options = [o for a in parser._subparsers._group_actions for sp in a.choices.values()  # noqa: SLF001
               for o in sp._option_string_actions]  # noqa: SLF001
    bad = next((e for e in extra if e.startswith("-")), extra[0])
    name = bad.split("=")[0]
    hint = difflib.get_close_matches(name, options, n=1)
    section = name[2:].split(".")[0] if name.startswith("--") and "." in name else ""
    allowed = ""
    if section in SECTIONS:
        allowed = f"; {section} options are {', '.join(f.name for f in dataclasses.fields(SECTIONS[section]))}"
    raise ConfigError(f"unknown option {bad!r}" + (f" (did you mean {hint[0]}?)" if hint else "") + allowed)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            _check_unknown(parser, extra)
        return args.func(args)
    except ConfigError as err:
        print(f"arlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except RuntimeError as err:  # a diverged run: one line, not a traceback
        from arlm_jax.train.loop import TrainingDiverged
        if not isinstance(err, TrainingDiverged):
            raise
        print(f"arlm: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
