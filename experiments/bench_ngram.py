"""The ``ngram`` family measured: fit time and peak memory, query throughput, generation speed,
and validation bits/byte by order (the history table's n-gram rows).

    python experiments/bench_ngram.py                          # orders 3 5 7, byte and 4,096 BPE
    python experiments/bench_ngram.py --parts history --orders 2 3 4 5 6 7
    python experiments/bench_ngram.py --tokenizers byte --orders 5

``fit``: each (tokenizer, order) in its own process: the default corpus's token cache (built
beforehand, not timed), then ``arlm_jax.fit`` timed, its peak resident memory (VmHWM, the
process's whole high-water mark: Python, JAX and the tokens included), the validation bits/byte
on the windows ``arlm train`` scores (8 batches of 16 x 128 tokens), the jitted query's
throughput (4,096 contexts per call) and ``generate``'s tokens/s (a 16-token prompt, 256 tokens
sampled at temperature 0.8, top-p 0.95; batch 1 and 32; after a warm-up call, median of 3).
``history``: ``arlm train --model.family ngram --model.order N`` as a user runs it (the demo's
data and cadence), its whole wall clock and the fit time it prints. JSON:
experiments/results/bench_ngram.json (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arlm_run import arlm_train  # noqa: E402
from results_io import write_result  # noqa: E402

CALLER = "bench_ngram"


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(tokenizer: str, order: int) -> dict:
    """One fit and its measurements, in this process (run by ``main`` as a subprocess)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import arlm_jax as A
    from arlm_jax.config import DataConfig
    from arlm_jax.data import tokens as data_lib
    from arlm_jax.data.tokenizer import load_tokenizer
    from arlm_jax.models.ngram import NGramConfig
    from arlm_jax.models.ngram.query import query
    from arlm_jax.train.evaluate import evaluate
    from arlm_jax.train.step import make_eval_step

    enc = load_tokenizer(tokenizer)
    data = data_lib.build_token_cache(DataConfig(tokenizer=tokenizer), enc)
    before = _vm_hwm_mib()
    t0 = time.perf_counter()
    fitted = A.fit(NGramConfig(vocab_size=enc.n_vocab, order=order), data.train)
    jax.block_until_ready(fitted.params)
    fit_s = time.perf_counter() - t0
    peak = _vm_hwm_mib()
    cfg, params = fitted.cfg, fitted.params
    val = evaluate(make_eval_step(cfg), params, data.val, 16, 128, 8, data.bytes_per_token)

    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(data.val) - order, size=4096)
    ctx = jnp.asarray(np.stack([np.asarray(data.val[s:s + order - 1], np.int32) for s in starts]).reshape(4096, -1))
    ctx_len = jnp.full((4096,), order - 1, jnp.int32)
    q = jax.jit(lambda p, c, n: query(p, cfg, c, n))
    jax.block_until_ready(q(params, ctx, ctx_len))
    times = []
    for _ in range(5):
        t1 = time.perf_counter()
        jax.block_until_ready(q(params, ctx, ctx_len))
        times.append(time.perf_counter() - t1)
    query_s = statistics.median(times)

    sampler = A.Sampler(temperature=0.8, top_p=0.95)
    gen = {}
    for batch in (1, 32):
        prompts = jnp.asarray(np.stack([np.asarray(data.val[s:s + 16], np.int32) for s in starts[:batch]]))
        run = lambda k: A.generate(params, cfg, prompts, jax.random.key(k), max_new_tokens=256,  # noqa: E731
                                   sampler=sampler).tokens
        jax.block_until_ready(run(0))
        ts = []
        for k in range(3):
            t1 = time.perf_counter()
            jax.block_until_ready(run(k + 1))
            ts.append(time.perf_counter() - t1)
        gen[f"batch_{batch}_tokens_per_s"] = round(batch * 256 / statistics.median(ts), 1)
    return {"tokenizer": tokenizer, "vocab": enc.n_vocab, "order": order, "train_tokens": len(data.train),
            "fit_s": round(fit_s, 2), "peak_rss_mib": round(peak, 1), "rss_before_fit_mib": round(before, 1),
            "sizes": list(cfg.sizes), "fanouts": list(cfg.fanouts), "table_mib": round(sum(
                a.nbytes for a in jax.tree.leaves(params)) / 2**20, 1),
            "val_bpb": round(val["bpb"], 4), "val_loss": round(val["loss"], 4),
            "query_contexts_per_s": round(4096 / query_s), "query_ms_per_4096": round(query_s * 1e3, 2), **gen}


def _build_cache(tokenizer: str) -> None:
    from arlm_jax.config import DataConfig
    from arlm_jax.data import tokens as data_lib
    from arlm_jax.data.tokenizer import load_tokenizer
    data_lib.build_token_cache(DataConfig(tokenizer=tokenizer), load_tokenizer(tokenizer))


def history(orders: list[int], tmp: Path) -> list[dict]:
    rows = []
    for order in orders:
        wall, out = arlm_train(["--model.family", "ngram", "--model.order", str(order)], tmp / f"h{order}", CALLER)
        fit = re.search(r"fitted ngram on [\d,]+ tokens in ([\d.]+)s", out)
        bpb = re.findall(r"bits/byte ([\d.]+)", out)
        rows.append({"order": order, "arlm_train_wall_s": round(wall, 1), "fit_s": float(fit.group(1)),
                     "final_bpb": float(bpb[-1])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=("fit", "history"), default=["fit", "history"])
    ap.add_argument("--orders", nargs="+", type=int, default=None,
                    help="fit: default 3 5 7; history: default 2 3 4 5 6 7")
    ap.add_argument("--tokenizers", nargs="+", default=["byte", "bpe4096"],
                    help="byte, or bpe4096 (trained here on the default corpus), or a .tiktoken file")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=2, metavar=("TOKENIZER", "ORDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    result: dict = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "python": platform.python_version(),
                    "date": time.strftime("%Y-%m-%d"), "method": __doc__.split("\n\n")[2].strip()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "fit" in args.parts:
            result["fit"] = []
            for tok in args.tokenizers:
                if tok == "bpe4096":
                    tok = str(tmp / "bpe4096.tiktoken")
                    arlm = Path(sys.executable).parent / "arlm"
                    subprocess.run([str(arlm), "tokenizer", "train", "--vocab-size", "4096", "--out", tok],
                                   check=True, capture_output=True)
                _build_cache(tok)  # here: the fits' peak memory is not the cache's building
                for order in args.orders or [3, 5, 7]:
                    proc = subprocess.run([sys.executable, __file__, "--child", tok, str(order)],
                                          capture_output=True, text=True)
                    if proc.returncode:
                        sys.exit(f"{CALLER}: the fit of order {order} ({tok}) failed:\n{proc.stderr[-2000:]}")
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    row["tokenizer"] = "bpe4096" if tok.endswith("bpe4096.tiktoken") else row["tokenizer"]
                    result["fit"].append(row)
                    print(json.dumps(row), flush=True)
        if "history" in args.parts:
            result["history"] = history(args.orders or [2, 3, 4, 5, 6, 7], tmp)
    write_result(result, args.out, "bench_ngram.json")


if __name__ == "__main__":
    main()
