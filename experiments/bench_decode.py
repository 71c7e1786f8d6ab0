"""Decode speed of arlm_jax.generate against Hugging Face GPT-2 (PyTorch) on the same machine.

    python experiments/bench_decode.py --model both

Both sides run the same GPT-2-architecture model (random weights, perturbed so biases and norms
are not 0/1) in float32: a 16-token random prompt, 128 new tokens, batch 1 and 8, greedy and
top-p 0.9 sampling. HF runs ``GPT2LMHeadModel.generate`` (use_cache, min_new_tokens=128) with our
weights copied in; greedy tokens of both sides are compared after checking that full-sequence
logits agree. Runs alternate (ours, theirs, ours, ...) with a 0.3 s pause before each, so neither
side is timed against the other's spinning worker threads; figures are medians.

Our weights are put in the decode layout once before timing (``unstack_blocks``: one array per
layer, as a model is loaded once); ours is timed three ways: the public ``generate`` end to end (-> new tokens/s, the ratio), and
``prefill`` and the 127-step ``decode`` scan, each in its own ``jax.jit`` (-> prefill ms and decode
ms per step). The roofline fraction is the bytes one decode step must read (formula in the JSON)
/ step time / the memory bandwidth of a ~1 GiB in-place float32 update measured in the same run.

Targets (CPU, float32): gpt2-124m >= 2x HF tokens/s at batch 1 and >= 3x at batch 8; small
>= 10x at batch 1; gpt2-124m batch 1 decode at >= 60% of the measured bandwidth roofline.

Writes JSON to --out (default experiments/results/bench_decode_<model>.json) and prints it.
No XLA flags are set; torch runs with os.cpu_count() threads.

On an accelerator, ours alone (the HF side runs on the CPU, so it is skipped), e.g. the >= 1B
model at batch 1 against the HBM roofline:

    python experiments/bench_decode.py --model gpt2-1.5b --dtype bfloat16 --batch 1 --no-torch
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import gpt2_arch, torch_available  # noqa: E402
from results_io import write_result  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from arlm_jax import ModelConfig  # noqa: E402
from arlm_jax.analysis.flops import param_count  # noqa: E402
from arlm_jax.decode.generate import decode, generate, prefill  # noqa: E402
from arlm_jax.models.transformer.model import unstack_blocks  # noqa: E402
from arlm_jax.models.transformer.model import forward, init  # noqa: E402
from arlm_jax.decode.sampling import Sampler  # noqa: E402

PROMPT_LEN, NEW_TOKENS = 16, 128
MODELS = {
    "small": ModelConfig(vocab_size=65, n_layers=4, n_heads=4, d_model=128, max_len=PROMPT_LEN + NEW_TOKENS),
    "gpt2-124m": ModelConfig.gpt2_124m(),
    "gpt2-1.5b": ModelConfig.gpt2_1_5b(),  # accelerators only: ~6 GB of float32 weights
}
SAMPLERS = {"greedy": None, "top_p": Sampler(temperature=1.0, top_p=0.9)}
HF_SAMPLING = {"greedy": {"do_sample": False},
               "top_p": {"do_sample": True, "top_p": 0.9, "top_k": 0, "temperature": 1.0}}
RATIO_TARGETS = {("gpt2-124m", 1): 2.0, ("gpt2-124m", 8): 3.0, ("small", 1): 10.0}
ROOFLINE_TARGETS = {("gpt2-124m", 1): 0.6, ("gpt2-1.5b", 1): 0.6}  # the second: on an accelerator
BYTES_FORMULA = ("bytes/step = itemsize * [(n_params - max_len*D)  (every weight once; the tied "
                 "embedding counted once, as the output matrix; learned-position rows excluded) "
                 "+ 2*L*B*K*E*(T + N/2)  (k and v of the filled cache slots, averaged over the "
                 "N-1 decode steps: step j attends over T+j slots)]")


def perturbed_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """``init`` plus 0.02 * N(0, 1) on every leaf, so biases and norm parameters are not 0 / 1."""
    k_init, k_noise = jax.random.split(jax.random.key(seed))
    params = init(k_init, cfg)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k_noise, len(leaves))
    return jax.tree.unflatten(tree, [a + 0.02 * jax.random.normal(k, a.shape, a.dtype)
                                     for a, k in zip(leaves, keys)])


def measure_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> dict:
    """Memory bandwidth of ``x + 1`` in place (donated) on a float32 array, read + write bytes."""
    x = jnp.zeros((n_bytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a + 1.0, donate_argnums=0)  # + 1, not + 0: XLA folds x + 0 away
    x = jax.block_until_ready(f(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t0)
    del x
    med = statistics.median(times)
    return {"bytes_per_s": 2 * n_bytes / med, "array_bytes": n_bytes, "bytes_counted": 2 * n_bytes,
            "method": "jit(x + 1.0, donated x) on float32, read + write bytes / median time",
            "runs_ms": [round(1e3 * t, 2) for t in times]}


def bytes_per_step(cfg: ModelConfig, params: dict, batch: int) -> int:
    item = jnp.dtype(cfg.dtype).itemsize
    weights = param_count(params) - (cfg.max_len * cfg.d_model if cfg.pos == "learned" else 0)
    kv = 2 * cfg.n_layers * batch * cfg.kv_heads * cfg.head_dim * (PROMPT_LEN + NEW_TOKENS / 2)
    return int(item * (weights + kv))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return time.perf_counter() - t0, out


SETTLE_S = 0.3


# ---- ours: the public generate, and prefill / decode each in its own jit ------------------------
_prefill = jax.jit(prefill, static_argnames=("cfg", "capacity", "stop", "pad_id"))
_decode = jax.jit(decode, static_argnames=("cfg", "n_steps", "stop", "pad_id"))


class Ours:
    def __init__(self, params: dict, cfg: ModelConfig, prompts: np.ndarray, sampler: Sampler | None):
        # The decode layout (one array per layer, arlm_jax.models.transformer.model.unstack_blocks), prepared once
        # like loading a model; generate would otherwise split the stacked weights every call.
        params = jax.jit(unstack_blocks)(params)
        if cfg.dtype != "float32":  # served in the compute dtype: each step reads half the bytes
            params = jax.jit(lambda p: jax.tree.map(lambda a: a.astype(cfg.dtype), p))(params)
        self.params, self.cfg, self.sampler = params, cfg, sampler
        self.prompts = prompts
        self.lengths = jnp.full((prompts.shape[0],), prompts.shape[1], jnp.int32)
        self.key = jax.random.key(1)
        self.first_call_s, _ = self.generate()  # compiles
        capacity = PROMPT_LEN + NEW_TOKENS - 1  # as generate sizes it
        self.prefill_args = dict(params=params, cfg=cfg, prompts=jnp.asarray(prompts), lengths=self.lengths,
                                 key=self.key, capacity=capacity, sampler=sampler, stop=(), pad_id=0)
        _, (self.state, _, _) = timed(_prefill, **self.prefill_args)
        timed(_decode, params, cfg, self.state, NEW_TOKENS - 1, sampler, (), 0)

    def generate(self) -> tuple[float, np.ndarray]:
        dt, out = timed(generate, self.params, self.cfg, self.prompts, self.key,
                        max_new_tokens=NEW_TOKENS, sampler=self.sampler)
        return dt, np.asarray(out.tokens)

    def prefill(self) -> float:
        return timed(_prefill, **self.prefill_args)[0]

    def decode(self) -> float:
        return timed(_decode, self.params, self.cfg, self.state, NEW_TOKENS - 1, self.sampler, (), 0)[0]


# ---- Hugging Face GPT-2 with our weights ----------------------------------------------------------
def hf_model(cfg: ModelConfig, params: dict):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    hf_cfg = transformers.GPT2Config(
        n_layer=cfg.n_layers, n_head=cfg.n_heads, n_embd=cfg.d_model, n_positions=cfg.max_len,
        vocab_size=cfg.vocab_size, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps,
        bos_token_id=None, eos_token_id=None)  # no EOS: min_new_tokens would mask it, ours doesn't
    model = transformers.GPT2LMHeadModel(hf_cfg).float().eval()
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
    b, D = params["blocks"], cfg.d_model
    a, m = b["attn"], b["mlp"]
    with torch.no_grad():
        model.transformer.wte.weight.copy_(t(params["embed"]["tok"]))
        model.transformer.wpe.weight.copy_(t(params["embed"]["pos"]))
        model.transformer.ln_f.weight.copy_(t(params["final_norm"]["scale"]))
        model.transformer.ln_f.bias.copy_(t(params["final_norm"]["bias"]))
        for l, h in enumerate(model.transformer.h):
            h.ln_1.weight.copy_(t(b["attn_norm"]["scale"][l]))
            h.ln_1.bias.copy_(t(b["attn_norm"]["bias"][l]))
            h.attn.c_attn.weight.copy_(t(jnp.concatenate([a[w][l].reshape(D, -1) for w in ("wq", "wk", "wv")], 1)))
            h.attn.c_attn.bias.copy_(t(jnp.concatenate([a[w][l].reshape(-1) for w in ("bq", "bk", "bv")])))
            h.attn.c_proj.weight.copy_(t(a["wo"][l].reshape(-1, D)))
            h.attn.c_proj.bias.copy_(t(a["bo"][l]))
            h.ln_2.weight.copy_(t(b["mlp_norm"]["scale"][l]))
            h.ln_2.bias.copy_(t(b["mlp_norm"]["bias"][l]))
            h.mlp.c_fc.weight.copy_(t(m["w_in"][l]))
            h.mlp.c_fc.bias.copy_(t(m["b_in"][l]))
            h.mlp.c_proj.weight.copy_(t(m["w_out"][l]))
            h.mlp.c_proj.bias.copy_(t(m["b_out"][l]))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head not tied"
    return model


def max_logit_diff(model, params: dict, cfg: ModelConfig, seed: int = 1) -> float:
    """Largest |ours - HF| full-sequence logit on a random batch [2, 32]."""
    import torch

    x = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 32), dtype=np.int32)
    ours = np.asarray(jax.jit(forward, static_argnames="cfg")(params, jnp.asarray(x), cfg=cfg)[0])
    with torch.inference_mode():
        theirs = model(input_ids=torch.from_numpy(x.astype(np.int64))).logits.numpy()
    return float(np.abs(ours - theirs).max())


def hf_generate(model, prompts: np.ndarray, sampler: str) -> tuple[float, np.ndarray]:
    import torch

    x = torch.from_numpy(prompts.astype(np.int64))
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0,
                             **HF_SAMPLING[sampler])
    return time.perf_counter() - t0, out[:, prompts.shape[1]:].numpy()


# ---- one case ---------------------------------------------------------------------------------------
def ms(ts: list[float]) -> dict:
    return {"median": 1e3 * statistics.median(ts), "all": [round(1e3 * t, 2) for t in ts]}


def settle(seconds: float = SETTLE_S) -> None:
    """Let the other runtime's worker threads stop spinning (OpenMP and XLA's pools both spin
    for a while after work) before a timed call, so neither side is timed against the other's
    idle spinning on a 2-core machine."""
    time.sleep(seconds)


def bench_case(name: str, cfg: ModelConfig, params: dict, model, batch: int, sampler: str,
               repeats: int, bandwidth: float) -> dict:
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, PROMPT_LEN), dtype=np.int32)
    ours = Ours(params, cfg, prompts, SAMPLERS[sampler])
    if model is not None:
        hf_generate(model, prompts, sampler)  # warm-up
    t: dict[str, list[float]] = {"e2e": [], "prefill": [], "decode": [], "hf": []}
    toks = {}
    for _ in range(repeats):  # alternate, so both sides see the same machine state
        settle()
        dt, toks["ours"] = ours.generate()
        t["e2e"].append(dt)
        if model is not None:
            settle()
            dt, toks["hf"] = hf_generate(model, prompts, sampler)
            t["hf"].append(dt)
        settle()
        t["prefill"].append(ours.prefill())
        settle()
        t["decode"].append(ours.decode())

    e2e = statistics.median(t["e2e"])
    step = statistics.median(t["decode"]) / (NEW_TOKENS - 1)
    step_bytes = bytes_per_step(cfg, params, batch)
    res = {
        "model": name, "batch": batch, "sampler": sampler,
        "ours": {
            "first_call_s": ours.first_call_s,
            "compile_s": ours.first_call_s - e2e,  # first call minus a steady call
            "generate_ms": ms(t["e2e"]),
            "prefill_ms": ms(t["prefill"]),
            "decode_ms_per_step": ms([x / (NEW_TOKENS - 1) for x in t["decode"]]),
            "overhead_ms": 1e3 * (e2e - statistics.median(t["prefill"]) - step * (NEW_TOKENS - 1)),
            "tokens_per_s": batch * NEW_TOKENS / e2e,
            "bytes_per_step": step_bytes,
            "roofline_fraction": step_bytes / step / bandwidth,
        },
    }
    if model is not None:
        hf = statistics.median(t["hf"])
        res["theirs"] = {"generate_ms": ms(t["hf"]), "tokens_per_s": batch * NEW_TOKENS / hf}
        res["ratio"] = res["ours"]["tokens_per_s"] / res["theirs"]["tokens_per_s"]
        if sampler == "greedy":
            same = toks["ours"] == toks["hf"]
            cols = np.flatnonzero(~same.all(axis=0))
            res |= {"greedy_tokens_match": bool(same.all()), "matching_tokens": int(same.sum()),
                    "compared_tokens": int(same.size),
                    "first_mismatch": int(cols[0]) if cols.size else None}
    targets = {}
    if (name, batch) in RATIO_TARGETS and "ratio" in res:
        targets[f"ratio >= {RATIO_TARGETS[name, batch]}"] = res["ratio"] >= RATIO_TARGETS[name, batch]
    if (name, batch) in ROOFLINE_TARGETS:
        goal = ROOFLINE_TARGETS[name, batch]
        targets[f"roofline_fraction >= {goal}"] = res["ours"]["roofline_fraction"] >= goal
    if targets:
        res["targets"] = targets
    return res


def bench_model(name: str, batches: list[int], samplers: list[str], repeats: int, with_torch: bool,
                bandwidth: float, dtype: str = "float32") -> tuple[dict, list[dict]]:
    cfg = gpt2_arch(MODELS[name], dtype)
    params = perturbed_params(cfg)
    info = {"config": {k: getattr(cfg, k) for k in ("vocab_size", "n_layers", "n_heads", "d_model", "ff_dim",
                                                    "max_len", "pos", "norm", "mlp", "tie_embeddings",
                                                    "bias", "dtype")},
            "params": param_count(params)}
    model = None
    if with_torch:
        model = hf_model(cfg, params)
        info["hf_attn_implementation"] = model.config._attn_implementation
        info["max_abs_logit_diff"] = max_logit_diff(model, params, cfg)
        info["logits_match_1e-3"] = info["max_abs_logit_diff"] <= 1e-3
    cases = [bench_case(name, cfg, params, model, b, s, repeats, bandwidth) for b in batches for s in samplers]
    return info, cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=[*MODELS, "both"], default="both",
                    help="both = small and gpt2-124m")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype of ours (weights and KV cache); HF is float32")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sampler", choices=[*SAMPLERS, "both"], default="both")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per case (after one warm-up)")
    ap.add_argument("--no-torch", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    with_torch = not args.no_torch and torch_available()
    if with_torch and args.dtype != "float32":
        ap.error("--dtype bfloat16 compares against nothing: add --no-torch (the HF side is float32)")
    names = ["small", "gpt2-124m"] if args.model == "both" else [args.model]
    samplers = list(SAMPLERS) if args.sampler == "both" else [args.sampler]
    bw = measure_bandwidth()
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "jax_version": jax.__version__, "device": str(jax.devices()[0]),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, "repeats": args.repeats,
        "bandwidth": bw, "bytes_per_step_formula": BYTES_FORMULA,
        "roofline_formula": "bytes_per_step / decode step seconds / bandwidth.bytes_per_s",
        "models": {}, "cases": [],
    }
    for name in names:
        result["models"][name], cases = bench_model(name, args.batch, samplers, args.repeats, with_torch,
                                                    bw["bytes_per_s"], args.dtype)
        result["cases"] += cases
    if with_torch:
        import torch
        import transformers
        result["torch"] = (f"torch {torch.__version__}, transformers {transformers.__version__}, "
                           f"{torch.get_num_threads()} threads")
    result["targets"] = {f"{c['model']} B{c['batch']} {c['sampler']}: {k}": v
                         for c in result["cases"] for k, v in c.get("targets", {}).items()}
    write_result(result, args.out, f"bench_decode_{args.model}.json")


if __name__ == "__main__":
    main()
