"""Train-step throughput of arlm_jax against Hugging Face GPT-2 (PyTorch) on the same machine.

    python experiments/bench_train.py --config both

Both sides train the same GPT-2-architecture model (learned positions, pre-LayerNorm, tanh-GELU
MLP, tied embeddings, biases) in float32 with AdamW and global-norm clipping 1.0, on the same
random token batches, for the same number of timed steps. Steps alternate (ours, theirs, ours,
...) so both see the same machine state; the figures are medians. Writes JSON to --out
(default experiments/results/bench_train_<config>.json) and prints it.

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
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import write_result  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from arlm_jax import ModelConfig
from arlm_jax.config import TrainConfig  # noqa: E402
from arlm_jax.analysis.flops import flops_per_token, param_count, peak_flops  # noqa: E402
from arlm_jax.train.optim import make_optimizer
from arlm_jax.train.step import init_state, make_train_step  # noqa: E402

FLOPS_FORMULA = "6*N + 12*L*D*T per token (N = matmul params incl. tied output matrix, T = seq len)"

# name -> (model config, batch size, sequence length)
CONFIGS = {
    "small": (ModelConfig(vocab_size=65, n_layers=4, n_heads=4, d_model=128, max_len=64), 12, 64),
    "gpt2-124m": (ModelConfig.gpt2_124m(), 4, 256),
    "gpt2-350m": (ModelConfig.gpt2_350m(), 4, 256),
}


def gpt2_arch(cfg: ModelConfig, dtype: str = "float32") -> ModelConfig:
    """Force GPT-2's architecture options, whatever the preset says."""
    return dataclasses.replace(cfg, pos="learned", norm="layernorm", norm_position="pre", mlp="gelu",
                               tie_embeddings=True, bias=True, dtype=dtype).validate()


def train_config(batch: int, seq: int) -> TrainConfig:
    return TrainConfig(batch_size=batch, seq_len=seq, lr=3e-4, schedule="constant", warmup_steps=0,
                       weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0).validate()


def random_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32) for _ in range(n)]


# ---- ours ----------------------------------------------------------------------------------
class Ours:
    def __init__(self, cfg: ModelConfig, tc: TrainConfig, example: np.ndarray):
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
        batch = {"tokens": jax.device_put(tokens)}
        jax.block_until_ready(batch)
        t0 = time.perf_counter()
        self.state, metrics = self.step_fn(self.state, batch)
        loss = float(metrics["loss"])  # blocks until the step is done
        return time.perf_counter() - t0, loss


# ---- Hugging Face GPT-2 --------------------------------------------------------------------
class Theirs:
    def __init__(self, cfg: ModelConfig, tc: TrainConfig):
        import torch
        import transformers

        self.torch = torch
        torch.set_num_threads(os.cpu_count())
        torch.manual_seed(0)
        hf_cfg = transformers.GPT2Config(
            n_layer=cfg.n_layers, n_head=cfg.n_heads, n_embd=cfg.d_model, n_positions=cfg.max_len,
            vocab_size=cfg.vocab_size, activation_function="gelu_new",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.model = transformers.GPT2LMHeadModel(hf_cfg).float().train()
        # Same decay rule as arlm_jax.train.optim.weight_decay_mask: matmul weights only.
        named = dict(self.model.named_parameters())
        decay = [p for n, p in named.items() if p.ndim >= 2 and "wte" not in n and "wpe" not in n]
        no_decay = [p for n, p in named.items() if not (p.ndim >= 2 and "wte" not in n and "wpe" not in n)]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)
        self.clip = tc.grad_clip
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
        loss = float(out.loss)
        return time.perf_counter() - t0, loss


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def device_peak_memory() -> int | None:
    """Peak bytes in use on the default device so far (None where the backend keeps no statistics, as on CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def planned(cfg: ModelConfig, tc: TrainConfig, name: str) -> dict:
    """What ``arlm plan`` predicts for this train step on one (simulated CPU) device."""
    from arlm_jax.config import RunConfig
    from arlm_jax.analysis.plan import plan

    run = RunConfig(preset=name, model=cfg, train=tc).validate()
    return plan(run, jax.devices("cpu")[:1])["train"]


def bench(name: str, steps: int, warmup: int, peak: tuple[float, str], with_torch: bool,
          dtype: str = "float32", batch: int | None = None, seq: int | None = None) -> dict:
    base, default_batch, default_seq = CONFIGS[name]
    batch, seq = batch or default_batch, seq or default_seq
    cfg = gpt2_arch(dataclasses.replace(base, max_len=max(base.max_len, seq)), dtype)
    tc = train_config(batch, seq)
    data = random_batches(warmup + steps, batch, seq, cfg.vocab_size)
    ours = Ours(cfg, tc, data[0])
    theirs = Theirs(cfg, tc) if with_torch else None

    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    losses: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i, tokens in enumerate(data):  # alternate, so both sides see the same machine state
        for side, runner in (("ours", ours), ("theirs", theirs)):
            if runner is None:
                continue
            dt, loss = runner.step(tokens)
            if i >= warmup:
                times[side].append(dt)
                losses[side].append(loss)

    tokens_per_step = batch * seq
    fpt = flops_per_token(cfg, seq)

    def summary(ts: list[float]) -> dict:
        med = statistics.median(ts)
        tps = tokens_per_step / med
        return {"ms_per_step": 1e3 * med, "ms_per_step_min": 1e3 * min(ts),
                "ms_per_step_all": [round(1e3 * t, 2) for t in ts],
                "tokens_per_s": tps, "mfu": fpt * tps / peak[0]}

    result = {
        "config": name,
        "model": {k: getattr(cfg, k) for k in ("vocab_size", "n_layers", "n_heads", "d_model", "ff_dim",
                                               "pos", "norm", "norm_position", "mlp", "tie_embeddings",
                                               "bias", "dtype")},
        "batch": batch, "seq_len": seq, "tokens_per_step": tokens_per_step,
        "timed_steps": steps, "warmup_steps": warmup,
        "jax_version": jax.__version__, "device": str(jax.devices()[0]),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "flops_per_token": fpt, "flops_formula": FLOPS_FORMULA,
        "peak_flops": peak[0], "peak_flops_source": peak[1],
        "compile_s": ours.compile_s,
        "params": ours.n_params,
        "ours": summary(times["ours"]) | {"final_loss": losses["ours"][-1]},
    }
    measured_peak = device_peak_memory()
    if measured_peak is not None:  # an accelerator: compare with the plan of the same step
        plan_train = planned(cfg, tc, name)
        result["memory"] = {"measured_peak_bytes": measured_peak, "compiled_here": ours.memory,
                            "plan_cpu_estimate": {k: plan_train[k] for k in ("peak", "temporaries", "params",
                                                                            "opt_state", "flops")},
                            "plan_peak_over_measured": plan_train["peak"] / measured_peak}
    if theirs is not None:
        result["theirs"] = summary(times["theirs"]) | {
            "impl": f"transformers.GPT2LMHeadModel, {theirs.version}, "
                    f"{theirs.torch.get_num_threads()} threads",
            "params": theirs.n_params, "final_loss": losses["theirs"][-1]}
        result["ratio"] = result["ours"]["tokens_per_s"] / result["theirs"]["tokens_per_s"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=[*CONFIGS, "both"], default="small")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 small, 10 the others)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype of ours (the HF side is float32 either way)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default per config)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default per config)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-flops", type=float, default=None, help="FLOP/s for MFU (default: measured)")
    ap.add_argument("--no-torch", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    if args.peak_flops:
        peak = (args.peak_flops, "--peak-flops")
    else:
        peak = peak_flops(args.dtype)
    with_torch = not args.no_torch and torch_available()
    if with_torch and args.dtype != "float32":
        ap.error("--dtype bfloat16 compares against nothing: add --no-torch (the HF side is float32)")
    names = ["small", "gpt2-124m"] if args.config == "both" else [args.config]
    results = [bench(n, args.steps or (20 if n == "small" else 10), args.warmup, peak, with_torch,
                     args.dtype, args.batch, args.seq) for n in names]
    out = results[0] if len(results) == 1 else {"results": results}
    write_result(out, args.out, f"bench_train_{args.config}.json")


if __name__ == "__main__":
    main()
