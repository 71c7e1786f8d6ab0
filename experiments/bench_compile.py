"""XLA:CPU compile time of the suite's kind of program under each set of XLA flags.

    python experiments/bench_compile.py              # 4 flag sets x 2 rounds, alternating
    python experiments/bench_compile.py --rounds 3

The test suite is dominated by compiles of small programs (tests/conftest.py picks its flags
from this). Each measurement is a fresh process that compiles 19 programs: for three tiny
Transformers (rope + GQA, learned, ALiBi), the full forward, greedy and top-p generate, beam
search and an AdamW train step; for tiny LSTM and GRU LMs, greedy generate and a train step.
It sums jax's own compile events (tracing, lowering to MLIR, XLA's backend compile). The flag
sets run in turn, A B C D A B C D, and the JSON reports the median of each, its ratio to the
first set, and how far the programs' outputs move from the first set's (``max_abs_diff``,
the largest absolute difference over all outputs: logits, log-probabilities, losses; 0.0 means
bit-identical). JSON: experiments/results/bench_compile.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FLAG_SETS = {
    "default": "",
    "opt0": "--xla_backend_optimization_level=0",
    "opt0+classic_emitters": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
    "opt0+classic_emitters+one_split": ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                                        "--xla_cpu_parallel_codegen_split_count=1"),
}


def child() -> None:
    """Compile and run the program set once; print one JSON line."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import monitoring

    import arlm_jax as A
    from arlm_jax.config import TrainConfig
    from arlm_jax.train import optim, step as T

    jax.config.update("jax_num_cpu_devices", 8)  # as the suite runs
    events: dict[str, float] = {}
    monitoring.register_event_duration_secs_listener(
        lambda name, secs, **_: events.__setitem__(name, events.get(name, 0.0) + secs))
    outs = []

    def train_step(cfg, params, toks):
        tc = dataclasses.replace(TrainConfig(), batch_size=2).validate()
        opt = optim.make_optimizer(tc, cfg)
        state = T.TrainState(step=jnp.int32(0), params=params, opt_state=opt.init(params))
        return T.make_train_step(cfg, tc, opt)(state, {"tokens": toks})[1]["loss"]

    t0 = time.perf_counter()
    transformers = [dict(pos="rope", n_kv_heads=2), dict(), dict(pos="alibi")]
    for kw in transformers:
        cfg = dataclasses.replace(A.ModelConfig.tiny(), **kw).validate()
        params = A.init(jax.random.key(0), cfg)
        toks = jax.random.randint(jax.random.key(1), (2, 20), 0, cfg.vocab_size)
        outs.append(jax.jit(lambda p, x, cfg=cfg: A.forward(p, x, cfg)[0])(params, toks))
        for sampler in (A.Sampler(), A.Sampler(temperature=0.8, top_p=0.9)):
            outs.append(A.generate(params, cfg, toks[:, :5], jax.random.key(0), max_new_tokens=8,
                                   sampler=sampler).logprobs)
        outs.append(A.beam_search(params, cfg, toks[:, :5], beams=3, max_new_tokens=6).logprobs)
        outs.append(train_step(cfg, params, toks))
    for family in ("lstm", "gru"):
        cfg = A.model_preset("tiny", family)
        params = A.init(jax.random.key(0), cfg)
        toks = jax.random.randint(jax.random.key(1), (2, 20), 0, cfg.vocab_size)
        outs.append(A.generate(params, cfg, toks[:, :5], jax.random.key(0), max_new_tokens=8).logprobs)
        outs.append(train_step(cfg, params, toks))
    wall = time.perf_counter() - t0
    short = {k.rsplit("/", 1)[-1].removesuffix("_duration"): v for k, v in events.items() if "/compile/" in k}
    print(json.dumps({"wall_s": wall, **short,
                      "outputs": [np.asarray(o, np.float32).tobytes().hex() for o in outs]}))


def _max_abs_diff(a: list[str], b: list[str]) -> float:
    """Largest |x - y| over two runs' outputs (float32 arrays as hex), as a Python float."""
    import numpy as np

    return max(float(np.max(np.abs(np.frombuffer(bytes.fromhex(x), np.float32)
                                   - np.frombuffer(bytes.fromhex(y), np.float32)), initial=0.0))
               for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child()
    from results_io import write_result

    runs: dict[str, list[dict]] = {name: [] for name in FLAG_SETS}
    for _ in range(args.rounds):
        for name, flags in FLAG_SETS.items():
            env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
            proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                                  check=True)
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first = next(iter(FLAG_SETS))
    base = statistics.median(r["backend_compile"] for r in runs[first])
    result = {"rounds": args.rounds, "programs": 19, "flag_sets": {}}
    for name, rs in runs.items():
        med = {k: round(statistics.median(r[k] for r in rs), 2)
               for k in ("wall_s", "jaxpr_trace", "jaxpr_to_mlir_module", "backend_compile")}
        result["flag_sets"][name] = {"xla_flags": FLAG_SETS[name], **med,
                                     "backend_compile_vs_default": round(med["backend_compile"] / base, 3),
                                     "max_abs_diff": _max_abs_diff(rs[0]["outputs"], runs[first][0]["outputs"])}
    import jax
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                         "jax": jax.__version__}
    write_result(result, args.out, "bench_compile.json")


if __name__ == "__main__":
    main()
