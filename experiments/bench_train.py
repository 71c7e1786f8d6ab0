"""Train-step throughput of arlm_jax against Hugging Face GPT-2 (PyTorch) on the same machine.

    python experiments/bench_train.py --config both

Both sides train the same GPT-2-architecture model (learned positions, pre-LayerNorm, tanh-GELU
MLP, tied embeddings, biases) in float32 with AdamW and global-norm clipping 1.0, on the same
random token batches, for the same number of timed steps. Steps alternate (ours, theirs, ours,
...) so both see the same machine state; the figures are medians. Writes JSON to --out
(default experiments/results/bench_train_<config>.json) and prints it.

No XLA flags are set: both sides run with their defaults, torch with os.cpu_count() threads.
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

from arlm_jax.config import ModelConfig, TrainConfig  # noqa: E402
from arlm_jax.flops import flops_per_token, param_count, peak_flops  # noqa: E402
from arlm_jax.train import init_state, make_optimizer, make_train_step  # noqa: E402

FLOPS_FORMULA = "6*N + 12*L*D*T per token (N = matmul params incl. tied output matrix, T = seq len)"

# name -> (model config, batch size, sequence length)
CONFIGS = {
    "small": (ModelConfig(vocab_size=65, n_layers=4, n_heads=4, d_model=128, max_len=64), 12, 64),
    "gpt2-124m": (ModelConfig.gpt2_124m(), 4, 256),
}


def gpt2_arch(cfg: ModelConfig) -> ModelConfig:
    """Force GPT-2's architecture options, whatever the preset says."""
    return dataclasses.replace(cfg, pos="learned", norm="layernorm", norm_position="pre", mlp="gelu",
                               tie_embeddings=True, bias=True, dtype="float32").validate()


def train_config(batch: int, seq: int) -> TrainConfig:
    return TrainConfig(batch_size=batch, seq_len=seq, lr=3e-4, schedule="constant", warmup_steps=0,
                       weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0).validate()


def random_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, (batch, seq + 1), dtype=np.int32) for _ in range(n)]


# ---- ours ----------------------------------------------------------------------------------
class Ours:
    def __init__(self, cfg: ModelConfig, tc: TrainConfig, example: np.ndarray):
        opt = make_optimizer(tc)
        self.state = init_state(jax.random.key(0), cfg, opt)
        self.n_params = param_count(self.state.params)
        batch = {"tokens": jnp.asarray(example)}
        t0 = time.perf_counter()
        self.step_fn = make_train_step(cfg, tc, opt).lower(self.state, batch).compile()
        self.compile_s = time.perf_counter() - t0

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
        # Same decay rule as arlm_jax.train.weight_decay_mask: matmul weights only.
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


def bench(name: str, steps: int, warmup: int, peak: tuple[float, str], with_torch: bool) -> dict:
    base, batch, seq = CONFIGS[name]
    cfg = gpt2_arch(dataclasses.replace(base, max_len=max(base.max_len, seq)))
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
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 small, 10 gpt2-124m)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-flops", type=float, default=None, help="FLOP/s for MFU (default: measured)")
    ap.add_argument("--no-torch", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    if args.peak_flops:
        peak = (args.peak_flops, "--peak-flops")
    else:
        peak = peak_flops("float32")
    with_torch = not args.no_torch and torch_available()
    names = list(CONFIGS) if args.config == "both" else [args.config]
    results = [bench(n, args.steps or (20 if n == "small" else 10), args.warmup, peak, with_torch)
               for n in names]
    out = results[0] if len(results) == 1 else {"results": results}
    write_result(out, args.out, f"bench_train_{args.config}.json")


if __name__ == "__main__":
    main()
