"""Our LSTM against PyTorch's ``nn.LSTM`` on CPU: training tokens/s and decoding tokens/s.

    python experiments/bench_rnn.py [--rounds 3] [--family lstm] [--hidden 512] [--layers 2]

Both sides: a byte vocabulary (257), a 512-wide embedding tied to the output, 2 LSTM layers of
512 units, float32, batch 32 x 128 tokens, AdamW (lr 1e-3, no weight decay) with global-norm
clipping at 1.0. Training: one optimizer step per call on random tokens. Decoding: 32 rows of
a 16-token prompt, then 128 sampled tokens (temperature 0.8) per call; ours is
``arlm_jax.generate`` (prefill, then one compiled ``lax.scan``), theirs a Python loop over
``nn.LSTM`` steps and ``torch.multinomial`` under ``torch.inference_mode``. Each side runs in
its own process, alternating (alternate.py); the ratio is ours tokens/s over theirs, from the
medians over every timed call of every round. Writes experiments/results/bench_rnn.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alternate import METHOD, alternate, importable, parse_or_work, speed_ratios, summary  # noqa: E402
from bench_train import random_batches, timed_steps  # noqa: E402
from results_io import write_result  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
VOCAB, PROMPT, TEMPERATURE = 257, 16, 0.8
LR, CLIP = 1e-3, 1.0


def decode_prompts(args: argparse.Namespace) -> np.ndarray:
    return np.random.default_rng(1).integers(0, VOCAB, (args.batch, PROMPT)).astype(np.int32)


# ---- ours ------------------------------------------------------------------------------------
def ours_worker(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp

    import arlm_jax as A
    from arlm_jax.config import TrainConfig
    from arlm_jax.models.rnn import RecurrentConfig
    from arlm_jax.train.optim import make_optimizer
    from arlm_jax.train.step import init_state, make_train_step

    cfg = RecurrentConfig(family=args.family, vocab_size=VOCAB, n_layers=args.layers, d_embed=args.hidden,
                          d_hidden=args.hidden, unroll=args.unroll).validate()
    tc = TrainConfig(batch_size=args.batch, seq_len=args.seq, lr=LR, schedule="constant", warmup_steps=0,
                     weight_decay=0.0, grad_clip=CLIP, optimizer="adamw").validate()
    out: dict = {"impl": f"arlm_jax {args.family}, jax {jax.__version__}", "model": describe_ours(cfg)}
    if "train" in args.parts:
        opt = make_optimizer(tc, cfg)
        state = init_state(jax.random.key(0), cfg, opt)
        data = random_batches(args.warmup + args.steps, args.batch, args.seq, VOCAB)
        t0 = time.perf_counter()
        step = make_train_step(cfg, tc, opt).lower(state, {"tokens": jnp.asarray(data[0])}).compile()
        out["compile_s"] = time.perf_counter() - t0
        box = [state]

        def one(tokens: np.ndarray) -> tuple[float, float]:
            batch = {"tokens": jax.device_put(tokens)}
            jax.block_until_ready(batch)
            t = time.perf_counter()
            box[0], metrics = step(box[0], batch)
            loss = float(metrics["loss"])
            return time.perf_counter() - t, loss

        out["train_times"], out["train_loss"] = timed_steps(one, data, args.warmup)
        out["params"] = sum(x.size for x in jax.tree.leaves(box[0].params))
    if "decode" in args.parts:
        params = A.init(jax.random.key(0), cfg)
        prompts = jnp.asarray(decode_prompts(args))
        sampler = A.Sampler(temperature=TEMPERATURE)
        times = []
        for i in range(args.warmup + args.decode_calls):
            t = time.perf_counter()
            gen = A.generate(params, cfg, prompts, jax.random.key(i), max_new_tokens=args.new_tokens, sampler=sampler)
            jax.block_until_ready(gen.tokens)
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
        out["decode_times"] = times
    return out


def describe_ours(cfg) -> str:
    import arlm_jax as A

    return A.family_of(cfg).describe(cfg)


# ---- PyTorch ---------------------------------------------------------------------------------
class TorchLM:
    """nn.Embedding -> nn.LSTM (or GRU / RNN) -> the embedding transposed, as in PyTorch's
    word_language_model example with tied weights."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.torch = torch
        torch.set_num_threads(os.cpu_count())
        torch.manual_seed(0)
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[args.family]
        self.embed = torch.nn.Embedding(VOCAB, args.hidden)
        self.rnn = rnn(args.hidden, args.hidden, args.layers, batch_first=True)
        self.params = list(self.embed.parameters()) + list(self.rnn.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.0)

    def logits(self, x, state=None):
        y, state = self.rnn(self.embed(x), state)
        return y @ self.embed.weight.T, state

    def train_step(self, tokens: np.ndarray) -> tuple[float, float]:
        torch = self.torch
        x = torch.from_numpy(tokens.astype(np.int64))
        t0 = time.perf_counter()
        logits, _ = self.logits(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        value = loss.item()
        return time.perf_counter() - t0, value

    def generate(self, prompts: np.ndarray, n: int, seed: int):
        torch = self.torch
        gen = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            logits, state = self.logits(torch.from_numpy(prompts.astype(np.int64)))
            last, out = logits[:, -1], []
            for _ in range(n):
                probs = torch.softmax(last / TEMPERATURE, -1)
                tok = torch.multinomial(probs, 1, generator=gen)  # [B, 1]
                out.append(tok)
                logits, state = self.logits(tok, state)
                last = logits[:, -1]
            return torch.cat(out, 1)


def theirs_worker(args: argparse.Namespace) -> dict:
    import torch

    lm = TorchLM(args)
    out: dict = {"impl": f"torch {torch.__version__} nn.{type(lm.rnn).__name__}, {torch.get_num_threads()} threads",
                 "params": sum(p.numel() for p in lm.params)}
    if "train" in args.parts:
        data = random_batches(args.warmup + args.steps, args.batch, args.seq, VOCAB)
        out["train_times"], out["train_loss"] = timed_steps(lm.train_step, data, args.warmup)
    if "decode" in args.parts:
        prompts, times = decode_prompts(args), []
        for i in range(args.warmup + args.decode_calls):
            t = time.perf_counter()
            lm.generate(prompts, args.new_tokens, i)
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
        out["decode_times"] = times
    return out


WORKERS = {"ours": ours_worker, "theirs": theirs_worker}


# ---- the parent ------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["lstm", "gru", "rnn"], default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512, help="units per layer (and the embedding width)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128, help="sampled tokens per decode call")
    ap.add_argument("--steps", type=int, default=10, help="timed train steps per worker")
    ap.add_argument("--decode-calls", type=int, default=5, help="timed decode calls per worker")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--unroll", type=int, default=1, help="our scan's time steps per iteration")
    ap.add_argument("--parts", nargs="+", choices=["train", "decode"], default=["train", "decode"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = parse_or_work(ap, WORKERS)
    if args is None:
        return
    if not importable("torch"):
        ap.error("bench_rnn compares against PyTorch: pip install torch (CPU wheel)")
    runs = alternate(SCRIPT, {"ours": sys.argv[1:], "theirs": sys.argv[1:]}, args.rounds, label="bench_rnn")
    result = {"family": args.family, "model": runs["ours"][0]["model"], "layers": args.layers,
              "hidden": args.hidden, "vocab": VOCAB, "batch": args.batch, "seq_len": args.seq,
              "unroll": args.unroll, "method": METHOD, "rounds": args.rounds,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "ours_impl": runs["ours"][0]["impl"], "theirs_impl": runs["theirs"][0]["impl"]}
    work = {"train": args.batch * args.seq, "decode": args.batch * args.new_tokens}  # tokens per call
    for part in args.parts:
        per = {side: [r[f"{part}_times"] for r in rs] for side, rs in runs.items()}
        sides = {side: summary(t) | {"tokens_per_s": work[part] / (summary(t)["median"] / 1e3)}
                 for side, t in per.items()}
        ratio, rounds = speed_ratios(per["ours"], per["theirs"])
        result[part] = {"tokens_per_call": work[part], "ours_ms": sides["ours"], "theirs_ms": sides["theirs"],
                        "ours_tokens_per_s": sides["ours"]["tokens_per_s"],
                        "theirs_tokens_per_s": sides["theirs"]["tokens_per_s"],
                        "ratio": ratio, "ratio_rounds": rounds}
        if part == "train":
            result[part]["final_loss"] = {side: statistics.median(r["train_loss"] for r in rs)
                                          for side, rs in runs.items()}
            result[part]["ours_compile_s"] = statistics.median(r["compile_s"] for r in runs["ours"])
    name = "bench_rnn.json" if args.family == "lstm" else f"bench_rnn_{args.family}.json"
    write_result(result, args.out, name)


if __name__ == "__main__":
    main()
