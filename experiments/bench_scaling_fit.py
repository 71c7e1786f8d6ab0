"""``fit_all`` timed end to end: 250 synthetic IsoFLOP points, 1,000 bootstrap resamples.

    python experiments/bench_scaling_fit.py                       # 25 budgets x 10 sizes
    python experiments/bench_scaling_fit.py --resamples 200 --budgets 10 --sizes 9

The points come from Chinchilla's law (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28) on an
IsoFLOP design (budgets 6e18..1e22 FLOPs, sizes log-spaced from N*/8 to 8·N*, D = C/(6N)) with
1% log-normal noise. ``cold`` is the first call in the process (jit compiles included), ``warm``
a second, identical call. The target is under 60 s for cold on a 2-core CPU. JSON:
experiments/results/bench_scaling_fit.json (--out).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np
from results_io import write_result

from arlm_jax.scaling.fit import fit_all
from arlm_jax.scaling.synthetic import CHINCHILLA, isoflop_points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, default=25)
    ap.add_argument("--sizes", type=int, default=10)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    points = isoflop_points(np.geomspace(6e18, 1e22, args.budgets), sizes=args.sizes, sigma=0.01, seed=0)
    seconds = []
    for _ in range(2):
        t0 = time.perf_counter()
        result = fit_all(points, budget=1e23, bootstrap=args.resamples)
        seconds.append(time.perf_counter() - t0)
    a3 = result["approach3"]
    truth_a = CHINCHILLA["beta"] / (CHINCHILLA["alpha"] + CHINCHILLA["beta"])
    write_result({
        "points": len(points), "resamples": args.resamples,
        "cold_s": round(seconds[0], 2), "warm_s": round(seconds[1], 2),
        "approach3": {k: a3[k] for k in ("E", "A", "B", "alpha", "beta", "a")},
        "a_interval": {name: result[name]["intervals"].get("a") for name in ("approach1", "approach2", "approach3")
                       if "skipped" not in result[name]},
        "truth": {**CHINCHILLA, "a": truth_a},
        "failed_resamples": result["bootstrap"]["failed"],
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
    }, args.out, "bench_scaling_fit.json")


if __name__ == "__main__":
    main()
