"""``arlm plan``: per-device memory, FLOPs and fit of a config on a mesh, without its hardware.

    arlm plan [--preset NAME] --devices N [--mesh.fsdp 8 --mesh.tensor 8 ...] [--json]
"""

from __future__ import annotations

import json

import jsonargparse

from arlm_jax.cli.options import Source, add_config_options, build_run, new_parser
from arlm_jax.errors import ConfigError

NAME = "plan"
# Simulating more CPU devices than this makes one XLA compile take minutes (docs/reliability.md).
MAX_DEVICES = 4096
HELP = "per-device memory, FLOPs and fit of a config on a mesh, compiled ahead of time on simulated devices"
CONFIG_OPTIONS = True


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description="Plan a run without its hardware: compile the train step and the "
                               "decode step for --devices simulated CPU devices laid out as "
                               "--mesh.*, from abstract inputs, and print per-device memory, "
                               "FLOPs per step and whether it fits TPU v5e/v5p, H100, H200. "
                               "Example: arlm plan --preset llama-7b --devices 64 --mesh.fsdp 8 "
                               "--mesh.tensor 8 --model.dtype bfloat16 --model.remat full")
    p.add_argument("--devices", type=int, default=0, metavar="N",
                   help="chips to plan for (0: the product of the mesh sizes)")
    p.add_argument("--decode-batch", type=int, default=1, metavar="B", help="rows of the decode step")
    p.add_argument("--decode-len", type=int, default=None, metavar="S",
                   help="KV-cache slots of the decode step (null: model.max_len)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_options(p, source)
    subcommands.add_subcommand(NAME, p, help=HELP)
    return p


def run(args: jsonargparse.Namespace, source: Source) -> int:
    cfg, _ = build_run(args, source)
    sizes = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    n = args.devices or (0 if -1 in sizes else sizes[0] * sizes[1] * sizes[2])
    if n < 1:
        raise ConfigError("plan: give --devices N (how many chips to plan for) when a mesh size is -1")
    if n > MAX_DEVICES:
        raise ConfigError(f"plan: devices={n} is more than the {MAX_DEVICES} simulated devices plan compiles "
                          f"for in reasonable time; plan a smaller mesh with the same fsdp and tensor "
                          f"sizes and batch per device (the per-device figures depend on those)")
    from arlm_jax.analysis import plan as plan_lib  # imports jax; the device count is set first
    devices = plan_lib.simulate_devices(n)
    result = plan_lib.plan(cfg, devices, decode_batch=args.decode_batch, decode_len=args.decode_len)
    print(json.dumps(result, indent=1) if args.json else plan_lib.format_plan(result))
    return 0
