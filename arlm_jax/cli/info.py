"""``arlm info``: the devices, and the parameter count and FLOPs per token of a config.

    arlm info [--preset NAME] [--config FILE] [--model.family NAME] [--model.* ...]

Works for every family: the model line is the family's own ``describe``.
"""

from __future__ import annotations

import jsonargparse

from arlm_jax.cli.options import Source, add_config_options, build_run, new_parser

NAME = "info"
HELP = "devices, parameter count and FLOPs per token of a config"
CONFIG_OPTIONS = True


def add_parser(subcommands, source: Source) -> jsonargparse.ArgumentParser:
    p = new_parser(description="Print the devices JAX sees and the size of the model a config "
                               "describes: parameters, FLOPs per token, memory of its training state.")
    add_config_options(p, source)
    subcommands.add_subcommand(NAME, p, help=HELP)
    return p


def run(args: jsonargparse.Namespace, source: Source) -> int:
    import jax

    from arlm_jax.analysis.flops import flops_per_token, param_count
    from arlm_jax.models import family_of

    cfg, _ = build_run(args, source)
    family = family_of(cfg.model)
    n = param_count(jax.eval_shape(lambda k: family.init(k, cfg.model), jax.random.key(0)))
    fpt = flops_per_token(cfg.model, cfg.seq_len)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.process_count()} process(es)")
    for d in jax.devices():
        print(f"  device {d.id}: {d.device_kind} ({d.platform})")
    print(f"preset {cfg.preset}: {n:,} parameters ({n / 1e6:.1f}M); {family.describe(cfg.model)}")
    print(f"FLOPs per token at T={cfg.seq_len}: train {fpt:.4g}, forward {fpt / 3:.4g}")
    if family.fit is None:
        print(f"float32 params + AdamW moments: {16 * n / 2**30:.2f} GiB")
    else:  # counted, not trained: its size is set by the corpus it is fitted to
        print(f"fitted by counting (no optimizer state): {4 * n / 2**30:.2f} GiB of tables at these sizes")
    return 0
