"""Train-step throughput of arlm_jax against Hugging Face GPT-2 (PyTorch) on the same machine.

    python experiments/bench_train.py --config both

Both sides train the same GPT-2-architecture model (learned positions, pre-LayerNorm, tanh-GELU
MLP, tied embeddings, biases) in float32 with AdamW and global-norm clipping 1.0, on the same
random token batches, for the same number of timed steps. Each side runs in its own process (this
script again, with a hidden ``--worker ours`` or ``--worker theirs``: the first never imports
torch, the second never imports jax; a short "prepare" process hands the HF worker our configs),
so neither is timed against the other runtime's spinning thread pools. The processes alternate
ours, theirs, ours, theirs, ... for ``--rounds`` rounds (experiments/alternate.py); each builds
and compiles its side, warms up, then times ``--steps`` steps. Figures are medians over every
timed step of every round and the ratio is the ratio of the two medians; the JSON also holds each
round's medians and ratio. Writes JSON to --out (default
experiments/results/bench_train_<config>.json) and prints it.

No XLA flags are set: both sides run with their defaults, torch with os.cpu_count() threads.

On an accelerator (issue 5's MFU figures), ours alone, in bfloat16, on one device:

    python experiments/bench_train.py --config gpt2-350m --dtype bfloat16 --batch 16 --seq 1024 --no-torch

``--dtype bfloat16`` computes in bf16 (float32 master weights, as ``arlm train --model.dtype
bfloat16``); the peak for MFU is then the data-sheet bf16 peak of the device (flops.PEAK_FLOPS).
Where the device reports memory statistics (GPUs, TPUs), the JSON also holds the measured peak
memory, the compiled step's own memory analysis, and what ``arlm plan`` predicts for the same
step from a simulated CPU device, so the plan's accuracy is read off the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from alternate import (
    METHOD,
    METHOD_ALONE,
    alternate,
    importable,
    parse_or_work,
    run_worker,
    speed_ratios,
    summary,
)
from results_io import write_result

if TYPE_CHECKING:
    from arlm_jax import ModelConfig
    from arlm_jax.config import TrainConfig

# jax and arlm_jax (which imports jax) are imported inside the functions of our side, torch inside
# those of theirs, so that each worker process loads one runtime only.

FLOPS_FORMULA = "6*N + 12*L*D*T per token (N = matmul params incl. tied output matrix, T = seq len)"
SCRIPT = str(Path(__file__).resolve())

# name -> (ModelConfig preset: a classmethod's name or the fields, batch size, sequence length)
CONFIGS = {
    "small": ({"vocab_size": 65, "n_layers": 4, "n_heads": 4, "d_model": 128, "max_len": 64}, 12, 64),
    "gpt2-124m": ("gpt2_124m", 4, 256),
    "gpt2-350m": ("gpt2_350m", 4, 256),
}
MODEL_FIELDS = ("vocab_size", "n_layers", "n_heads", "d_model", "ff_dim", "pos", "norm", "norm_position", "mlp",
                "tie_embeddings", "bias", "dtype", "scan_unroll", "matmul_dtype")


def model_config(preset: str | dict) -> ModelConfig:
    """``ModelConfig.<preset>()``, or ``ModelConfig(**preset)`` for a dict of fields."""
    from arlm_jax import ModelConfig

    return getattr(ModelConfig, preset)() if isinstance(preset, str) else ModelConfig(**preset)


def gpt2_arch(cfg: ModelConfig, dtype: str = "float32") -> ModelConfig:
    """Force GPT-2's architecture options, whatever the preset says."""
    return dataclasses.replace(cfg, pos="learned", norm="layernorm", norm_position="pre", mlp="gelu",
                               tie_embeddings=True, bias=True, dtype=dtype).validate()


def hf_dims(cfg: ModelConfig) -> dict:
    """The ``transformers.GPT2Config`` fields that give ``cfg``'s shapes."""
    return {"n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_embd": cfg.d_model, "n_positions": cfg.max_len,
            "vocab_size": cfg.vocab_size}


def train_config(batch: int, seq: int) -> TrainConfig:
    from arlm_jax.config import TrainConfig

    return TrainConfig(batch_size=batch, seq_len=seq, lr=3e-4, schedule="constant", warmup_steps=0,
                       weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0,
                       optimizer="adamw").validate()  # the HF side runs torch's AdamW


def setup(name: str, args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The model and train configs of config ``name`` under the command line's overrides."""
    preset, default_batch, default_seq = CONFIGS[name]
    batch, seq = args.batch or default_batch, args.seq or default_seq
    base = model_config(preset)
    cfg = gpt2_arch(dataclasses.replace(base, max_len=max(base.max_len, seq)), args.dtype)
    return apply_sets(cfg, args.set), train_config(batch, seq)


def apply_sets(cfg: ModelConfig, sets: list[str]) -> ModelConfig:
    """``--set field=value`` overrides of our model config (values parsed as JSON, else strings)."""
    import json

    changes = {}
    for item in sets:
        name, _, value = item.partition("=")
        try:
            changes[name] = json.loads(value)
        except json.JSONDecodeError:
            changes[name] = value
    return dataclasses.replace(cfg, **changes).validate() if changes else cfg


def n_steps(name: str, args: argparse.Namespace) -> int:
    return args.steps or (20 if name == "small" else 10)


def random_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32) for _ in range(n)]


def timed_steps(step, data: list[np.ndarray], warmup: int) -> tuple[list[float], float]:
    """Run ``step`` (tokens -> (seconds, loss)) on every batch: (seconds of each step after the
    first ``warmup``, the last loss)."""
    times = []
    for i, tokens in enumerate(data):
        dt, loss = step(tokens)
        if i >= warmup:
            times.append(dt)
    return times, loss


# ---- ours ----------------------------------------------------------------------------------
class Ours:
    def __init__(self, cfg: ModelConfig, tc: TrainConfig, example: np.ndarray):
        import jax
        import jax.numpy as jnp

        from arlm_jax.analysis.flops import param_count
        from arlm_jax.train.optim import make_optimizer
        from arlm_jax.train.step import init_state, make_train_step

        opt = make_optimizer(tc, cfg)
        self.state = init_state(jax.random.key(0), cfg, opt)
        self.n_params = param_count(self.state.params)
        batch = {"tokens": jnp.asarray(example)}
        t0 = time.perf_counter()
        self.step_fn = make_train_step(cfg, tc, opt).lower(self.state, batch).compile()
        self.compile_s = time.perf_counter() - t0
        m = self.step_fn.memory_analysis()
        self.memory = None if m is None else {
            "arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes}

    def step(self, tokens: np.ndarray) -> tuple[float, float]:
        import jax

        batch = {"tokens": jax.device_put(tokens)}
        jax.block_until_ready(batch)
        t0 = time.perf_counter()
        self.state, metrics = self.step_fn(self.state, batch)
        loss = float(metrics["loss"])  # blocks until the step is done
        return time.perf_counter() - t0, loss


def device_peak_memory() -> int | None:
    """Peak bytes in use on the default device so far (None where the backend keeps no statistics, as on CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def planned(cfg: ModelConfig, tc: TrainConfig, name: str) -> dict:
    """What ``arlm plan`` predicts for this train step on one (simulated CPU) device."""
    import jax

    from arlm_jax.analysis.plan import plan
    from arlm_jax.config import RunConfig

    run = RunConfig(preset=name, model=cfg, train=tc).validate()
    return plan(run, jax.devices("cpu")[:1])["train"]


def ours_worker(args: argparse.Namespace) -> dict:
    """Compile our train step for ``args.config``, warm up and time it: one JSON-able dict."""
    import jax

    from arlm_jax.analysis.flops import flops_per_token, peak_flops

    peak = (args.peak_flops, "--peak-flops") if args.peak_flops else peak_flops(args.dtype)
    cfg, tc = setup(args.config, args)
    data = random_batches(args.warmup + n_steps(args.config, args), tc.batch_size, tc.seq_len, cfg.vocab_size)
    ours = Ours(cfg, tc, data[0])
    times, loss = timed_steps(ours.step, data, args.warmup)
    out = {"model": {k: getattr(cfg, k, None) for k in MODEL_FIELDS}, "batch": tc.batch_size, "seq_len": tc.seq_len,
           "jax_version": jax.__version__, "device": str(jax.devices()[0]),
           "flops_per_token": flops_per_token(cfg, tc.seq_len), "peak_flops": peak,
           "compile_s": ours.compile_s, "params": ours.n_params, "times": times, "final_loss": loss}
    measured_peak = device_peak_memory()
    if measured_peak is not None:  # an accelerator: compare with the plan of the same step
        plan_train = planned(cfg, tc, args.config)
        out["memory"] = {"measured_peak_bytes": measured_peak, "compiled_here": ours.memory,
                         "plan_cpu_estimate": {k: plan_train[k] for k in ("peak", "temporaries", "params",
                                                                         "opt_state", "flops")},
                         "plan_peak_over_measured": plan_train["peak"] / measured_peak}
    return out


def prepare_worker(args: argparse.Namespace) -> dict:
    """Write what the HF worker needs of each config (shapes, optimizer, batch) to --inputs/spec.json,
    so that it never imports arlm_jax (and with it jax) to read our presets."""
    spec = {}
    for name in config_names(args.config):
        cfg, tc = setup(name, args)
        spec[name] = {"hf": hf_dims(cfg), "batch": tc.batch_size, "seq_len": tc.seq_len,
                      "optim": {k: getattr(tc, k) for k in ("lr", "beta1", "beta2", "eps", "weight_decay",
                                                            "grad_clip")}}
    path = Path(args.inputs) / "spec.json"
    path.write_text(json.dumps(spec))
    return {"wrote": str(path)}


# ---- Hugging Face GPT-2 --------------------------------------------------------------------
class Theirs:
    def __init__(self, spec: dict):
        import torch
        import transformers

        self.torch = torch
        torch.set_num_threads(os.cpu_count())
        torch.manual_seed(0)
        hf_cfg = transformers.GPT2Config(**spec["hf"], activation_function="gelu_new",
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.model = transformers.GPT2LMHeadModel(hf_cfg).float().train()
        # Same decay rule as arlm_jax.train.optim.weight_decay_mask: matmul weights only.
        named = dict(self.model.named_parameters())
        decay = [p for n, p in named.items() if p.ndim >= 2 and "wte" not in n and "wpe" not in n]
        no_decay = [p for n, p in named.items() if not (p.ndim >= 2 and "wte" not in n and "wpe" not in n)]
        o = spec["optim"]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
        self.clip = o["grad_clip"]
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.version = f"torch {torch.__version__}, transformers {transformers.__version__}"

    def step(self, tokens: np.ndarray) -> tuple[float, float]:
        x = self.torch.from_numpy(tokens.astype(np.int64))
        t0 = time.perf_counter()
        out = self.model(input_ids=x[:, :-1], labels=x[:, :-1].clone())
        out.loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        return time.perf_counter() - t0, loss


def theirs_worker(args: argparse.Namespace) -> dict:
    """Build HF GPT-2 for ``args.config`` from the prepared spec, warm up and time it."""
    spec = json.loads((Path(args.inputs) / "spec.json").read_text())[args.config]
    data = random_batches(args.warmup + n_steps(args.config, args), spec["batch"], spec["seq_len"],
                          spec["hf"]["vocab_size"])
    theirs = Theirs(spec)
    times, loss = timed_steps(theirs.step, data, args.warmup)
    return {"impl": f"transformers.GPT2LMHeadModel, {theirs.version}, {theirs.torch.get_num_threads()} threads",
            "params": theirs.n_params, "times": times, "final_loss": loss}


WORKERS = {"prepare": prepare_worker, "ours": ours_worker, "theirs": theirs_worker}


# ---- the parent: alternate the workers, aggregate ----------------------------------------------
def config_names(config: str) -> list[str]:
    return ["small", "gpt2-124m"] if config == "both" else [config]


def bench(name: str, args: argparse.Namespace, sides: list[str], rounds: int, inputs: str) -> dict:
    # the worker parses the parent's own command line; the flags added last override it
    argv = [*sys.argv[1:], "--config", name, "--inputs", inputs]
    runs = alternate(SCRIPT, {side: argv for side in sides}, rounds, label=f"bench_train {name}")
    ours = runs["ours"]
    first = ours[0]
    tokens_per_step = first["batch"] * first["seq_len"]
    fpt = first["flops_per_token"]
    peak = statistics.median(r["peak_flops"][0] for r in ours)

    def side(results: list[dict]) -> dict:
        s = summary([r["times"] for r in results])
        tps = tokens_per_step / (s["median"] / 1e3)
        return {"ms_per_step": s["median"], "ms_per_step_min": s["min"], "ms_per_step_all": s["all"],
                "ms_per_step_rounds": s["rounds"], "tokens_per_s": tps, "mfu": fpt * tps / peak,
                "final_loss": results[0]["final_loss"], "final_loss_rounds": [r["final_loss"] for r in results]}

    result = {
        "config": name, "model": first["model"],
        "batch": first["batch"], "seq_len": first["seq_len"], "tokens_per_step": tokens_per_step,
        "timed_steps": n_steps(name, args), "warmup_steps": args.warmup,
        "rounds": rounds, "method": METHOD if "theirs" in runs else METHOD_ALONE,
        "jax_version": first["jax_version"], "device": first["device"],
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "flops_per_token": fpt, "flops_formula": FLOPS_FORMULA,
        "peak_flops": peak, "peak_flops_source": first["peak_flops"][1],
        "compile_s": statistics.median(r["compile_s"] for r in ours),
        "params": first["params"],
        "ours": side(ours),
    }
    if "memory" in first:
        result["memory"] = first["memory"]
    if "theirs" in runs:
        theirs = runs["theirs"]
        result["theirs"] = side(theirs) | {"impl": theirs[0]["impl"], "params": theirs[0]["params"]}
        result["ratio"], result["ratio_rounds"] = speed_ratios([r["times"] for r in ours],
                                                               [r["times"] for r in theirs])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=[*CONFIGS, "both"], default="small")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per side per round (default 20 small, 10 the others)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype of ours (the HF side is float32 either way)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default per config)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default per config)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each worker")
    ap.add_argument("--peak-flops", type=float, default=None, help="FLOP/s for MFU (default: measured)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="worker processes per side, alternating (default 3; 1 with --no-torch)")
    ap.add_argument("--no-torch", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a field of our model config, e.g. bias=false or scan_unroll=4 (with --no-torch)")
    ap.add_argument("--out", default=None)
    args = parse_or_work(ap, WORKERS)
    if args is None:
        return

    with_torch = not args.no_torch and importable("torch", "transformers")
    if with_torch and args.set:
        ap.error("--set changes only our model: add --no-torch (the HF side is GPT-2 as it is)")
    if with_torch and args.dtype != "float32":
        ap.error("--dtype bfloat16 compares against nothing: add --no-torch (the HF side is float32)")
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be at least 1")
    sides = ["ours", "theirs"] if with_torch else ["ours"]
    rounds = args.rounds or (3 if with_torch else 1)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as inputs:
        if with_torch:
            run_worker(SCRIPT, [*sys.argv[1:], "--inputs", inputs], "prepare")
        results = [bench(n, args, sides, rounds, inputs) for n in config_names(args.config)]
    out = results[0] if len(results) == 1 else {"results": results}
    write_result(out, args.out, f"bench_train_{args.config}.json")


if __name__ == "__main__":
    main()
