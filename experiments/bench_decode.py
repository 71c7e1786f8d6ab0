"""Decode speed of arlm_jax.generate against Hugging Face GPT-2 (PyTorch) on the same machine.

    python experiments/bench_decode.py --model both

Both sides run the same GPT-2-architecture model (random weights, perturbed so biases and norms
are not 0/1) in float32: a 16-token random prompt, 128 new tokens, batch 1 and 8, greedy and
top-p 0.9 sampling. HF runs ``generate`` (use_cache, min_new_tokens=128) on our weights, written
as a HF folder by ``arlm_jax.to_hf`` and loaded with ``AutoModelForCausalLM``; greedy tokens of
both sides are compared after checking that full-sequence logits agree.

With ``--hf DIR`` both sides decode a real model instead, GPT-2 or LLaMA: ours reads the folder
with ``arlm_jax.from_hf``, HF's with ``AutoModelForCausalLM`` (docs/huggingface.md shows how to
download one):

    python experiments/bench_decode.py --hf models/gpt2 --batch 1 8 Each side runs in its own process (this script again, with a hidden ``--worker
ours`` or ``--worker theirs``: the first never imports torch, the second never imports jax, and
reads our weights and reference logits from a temporary folder that a "prepare" process wrote),
so neither side is timed against the other runtime's spinning worker threads. Per model, the
processes alternate ours, theirs, ours, theirs, ... for ``--rounds`` rounds
(experiments/alternate.py); each compiles or warms up every case (batch, sampler) once, then times
it ``--repeats`` times. Figures are medians over every timed call of every round and the ratio is
the ratio of the two medians; the JSON also holds each round's medians and ratio.

Our weights are put in the decode layout once before timing (``unstack_blocks``: one array per
layer, as a model is loaded once); ours is timed three ways: the public ``generate`` end to end
(-> new tokens/s, the ratio), and ``prefill`` and the 127-step ``decode`` scan, each in its own
``jax.jit`` (-> prefill ms and decode ms per step). The roofline fraction is the bytes one decode
step must read (formula in the JSON) / step time / the memory bandwidth of a ~1 GiB in-place
float32 update, measured in each of our processes (the median of those readings).

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
from bench_train import gpt2_arch, model_config
from results_io import write_result

if TYPE_CHECKING:
    from arlm_jax import ModelConfig
    from arlm_jax.decode.sampling import Sampler

# jax and arlm_jax (which imports jax) are imported inside the functions of our side, torch inside
# those of theirs, so that each worker process loads one runtime only.

SCRIPT = str(Path(__file__).resolve())
PROMPT_LEN, NEW_TOKENS = 16, 128
# name -> ModelConfig preset (bench_train.model_config)
MODELS = {
    "small": {"vocab_size": 65, "n_layers": 4, "n_heads": 4, "d_model": 128, "max_len": PROMPT_LEN + NEW_TOKENS},
    "gpt2-124m": "gpt2_124m",
    "gpt2-1.5b": "gpt2_1_5b",  # accelerators only: ~6 GB of float32 weights
}
SAMPLERS = ("greedy", "top_p")
HF_SAMPLING = {"greedy": {"do_sample": False},
               "top_p": {"do_sample": True, "top_p": 0.9, "top_k": 0, "temperature": 1.0}}
RATIO_TARGETS = {("gpt2-124m", 1): 2.0, ("gpt2-124m", 8): 3.0, ("small", 1): 10.0}
ROOFLINE_TARGETS = {("gpt2-124m", 1): 0.6, ("gpt2-1.5b", 1): 0.6}  # the second: on an accelerator
BYTES_FORMULA = ("bytes/step = itemsize * [(n_params - max_len*D)  (every weight once; the tied "
                 "embedding counted once, as the output matrix; learned-position rows excluded) "
                 "+ 2*L*B*K*E*(T + N/2)  (k and v of the filled cache slots, averaged over the "
                 "N-1 decode steps: step j attends over T+j slots)]")
CONFIG_FIELDS = ("vocab_size", "n_layers", "n_heads", "d_model", "ff_dim", "max_len", "pos", "norm", "mlp",
                 "tie_embeddings", "bias", "dtype")


def model_names(model: str, args: argparse.Namespace | None = None) -> list[str]:
    if args is not None and args.hf:
        return [hf_name(args.hf)]
    return ["small", "gpt2-124m"] if model == "both" else [model]


def hf_name(folder: str) -> str:
    """The model name of ``--hf DIR`` in the JSON and the output file's name."""
    return "hf-" + (Path(folder).resolve().name or "model")


def cases(args: argparse.Namespace) -> list[tuple[int, str]]:
    """(batch, sampler) of every case, in the order both sides run them."""
    samplers = list(SAMPLERS) if args.sampler == "both" else [args.sampler]
    return [(b, s) for b in args.batch for s in samplers]


def case_prompts(vocab: int, batch: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, (batch, PROMPT_LEN), dtype=np.int32)


def logit_check_tokens(vocab: int) -> np.ndarray:
    """The random batch [2, 32] on which both sides' full-sequence logits are compared."""
    return np.random.default_rng(1).integers(0, vocab, (2, 32), dtype=np.int32)


# ---- ours: the public generate, and prefill / decode each in its own jit ------------------------
def our_sampler(name: str) -> Sampler | None:
    from arlm_jax.decode.sampling import Sampler

    return {"greedy": None, "top_p": Sampler(temperature=1.0, top_p=0.9)}[name]


def perturbed_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """``init`` plus 0.02 * N(0, 1) on every leaf, so biases and norm parameters are not 0 / 1."""
    import jax

    from arlm_jax.models.transformer.model import init

    k_init, k_noise = jax.random.split(jax.random.key(seed))
    params = init(k_init, cfg)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(k_noise, len(leaves))
    return jax.tree.unflatten(tree, [a + 0.02 * jax.random.normal(k, a.shape, a.dtype)
                                     for a, k in zip(leaves, keys)])


def measure_bandwidth(n_bytes: int = 1 << 30, repeats: int = 5) -> dict:
    """Memory bandwidth of ``x + 1`` in place (donated) on a float32 array, read + write bytes."""
    import jax
    import jax.numpy as jnp

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
    import jax.numpy as jnp

    from arlm_jax.analysis.flops import param_count

    item = jnp.dtype(cfg.dtype).itemsize
    weights = param_count(params) - (cfg.max_len * cfg.d_model if cfg.pos == "learned" else 0)
    kv = 2 * cfg.n_layers * batch * cfg.kv_heads * cfg.head_dim * (PROMPT_LEN + NEW_TOKENS / 2)
    return int(item * (weights + kv))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return time.perf_counter() - t0, out


class Ours:
    def __init__(self, params: dict, cfg: ModelConfig, prompts: np.ndarray, sampler: Sampler | None):
        import jax
        import jax.numpy as jnp

        from arlm_jax.decode.generate import decode, prefill
        from arlm_jax.models.transformer.model import unstack_blocks

        # The decode layout (one array per layer, arlm_jax.models.transformer.model.unstack_blocks),
        # prepared once like loading a model; generate would otherwise split the stacked weights every call.
        params = jax.jit(unstack_blocks)(params)
        if cfg.dtype != "float32":  # served in the compute dtype: each step reads half the bytes
            params = jax.jit(lambda p: jax.tree.map(lambda a: a.astype(cfg.dtype), p))(params)
        self.params, self.cfg, self.sampler = params, cfg, sampler
        self.prompts = prompts
        self.lengths = jnp.full((prompts.shape[0],), prompts.shape[1], jnp.int32)
        self.key = jax.random.key(1)
        self.first_call_s, _ = self.generate()  # compiles
        self._prefill = jax.jit(prefill, static_argnames=("cfg", "capacity", "stop", "pad_id"))
        self._decode = jax.jit(decode, static_argnames=("cfg", "n_steps", "stop", "pad_id"))
        capacity = PROMPT_LEN + NEW_TOKENS - 1  # as generate sizes it
        self.prefill_args = {"params": params, "cfg": cfg, "prompts": jnp.asarray(prompts), "lengths": self.lengths,
                             "key": self.key, "capacity": capacity, "sampler": sampler, "stop": (), "pad_id": 0}
        _, (self.state, _, _) = timed(self._prefill, **self.prefill_args)
        self.decode()  # compiles

    def generate(self) -> tuple[float, np.ndarray]:
        from arlm_jax.decode.generate import generate

        dt, out = timed(generate, self.params, self.cfg, self.prompts, self.key,
                        max_new_tokens=NEW_TOKENS, sampler=self.sampler)
        return dt, np.asarray(out.tokens)

    def prefill(self) -> float:
        return timed(self._prefill, **self.prefill_args)[0]

    def decode(self) -> float:
        return timed(self._decode, self.params, self.cfg, self.state, NEW_TOKENS - 1, self.sampler, (), 0)[0]


def our_model(name: str, args: argparse.Namespace, dtype: str = "float32") -> tuple[dict, ModelConfig]:
    """(params, cfg) of model ``name``: a built-in GPT-2-architecture model with perturbed random
    weights, or with ``--hf DIR`` the weights of that Hugging Face folder (``arlm_jax.from_hf``)."""
    import dataclasses

    if args.hf:
        from arlm_jax.convert.hf import from_hf

        params, cfg = from_hf(args.hf)
        if cfg.max_len < PROMPT_LEN + NEW_TOKENS:
            raise SystemExit(f"--hf {args.hf}: its context of {cfg.max_len} tokens is shorter than "
                             f"{PROMPT_LEN} + {NEW_TOKENS}")
        return params, dataclasses.replace(cfg, dtype=dtype).validate()
    cfg = gpt2_arch(model_config(MODELS[name]), dtype)
    return perturbed_params(cfg), cfg


def ours_worker(args: argparse.Namespace) -> dict:
    """Bandwidth, then every case of ``args.model``: compile, then time --repeats calls of each program."""
    import jax

    from arlm_jax.analysis.flops import param_count

    bandwidth = measure_bandwidth()
    params, cfg = our_model(args.model, args, args.dtype)
    out = []
    for batch, sampler in cases(args):
        ours = Ours(params, cfg, case_prompts(cfg.vocab_size, batch), our_sampler(sampler))
        times: dict[str, list[float]] = {"e2e": [], "prefill": [], "decode": []}
        for _ in range(args.repeats):
            dt, tokens = ours.generate()
            times["e2e"].append(dt)
            times["prefill"].append(ours.prefill())
            times["decode"].append(ours.decode())
        out.append({"batch": batch, "sampler": sampler, "first_call_s": ours.first_call_s, "times": times,
                    "tokens": tokens.tolist() if sampler == "greedy" else None,
                    "bytes_per_step": bytes_per_step(cfg, params, batch)})
        del ours  # its copy of the weights, before the next case makes one
    return {"jax_version": jax.__version__, "device": str(jax.devices()[0]), "bandwidth": bandwidth,
            "info": {"config": {k: getattr(cfg, k) for k in CONFIG_FIELDS}, "params": param_count(params)},
            "cases": out}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez``, synced: on disk before the workers start, not written back while one is timed."""
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        os.fsync(f.fileno())


def prepare_worker(args: argparse.Namespace) -> dict:
    """Write, per model, our logits on ``logit_check_tokens`` and our weights as a Hugging Face
    folder (``arlm_jax.to_hf``; with ``--hf DIR`` that folder itself serves) to --inputs, so that
    the HF worker never imports jax."""
    import jax

    from arlm_jax.convert.hf import to_hf
    from arlm_jax.models.transformer.model import forward

    inputs, spec = Path(args.inputs), {}
    for name in model_names(args.model, args):
        params, cfg = our_model(name, args)  # float32: the only dtype compared with HF
        logits = jax.jit(forward, static_argnames="cfg")(params, logit_check_tokens(cfg.vocab_size), cfg=cfg)[0]
        save_npz(inputs / f"{name}.logits.npz", {"logits": np.asarray(logits)})
        folder = Path(args.hf) if args.hf else inputs / name
        if not args.hf:
            to_hf(params, cfg, folder)
        spec[name] = {"folder": str(folder.resolve()), "vocab_size": cfg.vocab_size}
    (inputs / "spec.json").write_text(json.dumps(spec))
    return {"wrote": sorted(p.name for p in inputs.iterdir())}


# ---- Hugging Face's model of the same weights --------------------------------------------------------
def hf_model(folder: str):
    """``AutoModelForCausalLM`` of a HF folder in float32 (GPT-2 or LLaMA), without an EOS token:
    ``min_new_tokens`` would mask it, ours does not stop either."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model


def max_logit_diff(model, ours: np.ndarray) -> float:
    """Largest |ours - HF| full-sequence logit on ``logit_check_tokens`` (``ours``: our logits there, [2, 32, V])."""
    import torch

    x = logit_check_tokens(ours.shape[-1])
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


def theirs_worker(args: argparse.Namespace) -> dict:
    """HF's model of ``args.model``'s weights: the logit check, then every case: one
    warm-up call, then --repeats timed calls."""
    import torch
    import transformers

    inputs = Path(args.inputs)
    spec = json.loads((inputs / "spec.json").read_text())[args.model]
    model = hf_model(spec["folder"])
    with np.load(inputs / f"{args.model}.logits.npz") as f:
        diff = max_logit_diff(model, f["logits"])
    out = []
    for batch, sampler in cases(args):
        prompts = case_prompts(spec["vocab_size"], batch)
        hf_generate(model, prompts, sampler)  # warm-up
        times = []
        for _ in range(args.repeats):
            dt, tokens = hf_generate(model, prompts, sampler)
            times.append(dt)
        out.append({"batch": batch, "sampler": sampler, "times": times,
                    "tokens": tokens.tolist() if sampler == "greedy" else None})
    return {"torch": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                     f"{torch.get_num_threads()} threads",
            "hf_attn_implementation": model.config._attn_implementation, "max_abs_logit_diff": diff,
            "cases": out}


WORKERS = {"prepare": prepare_worker, "ours": ours_worker, "theirs": theirs_worker}


# ---- the parent: alternate the workers, aggregate ------------------------------------------------
def bandwidth_of(readings: list[dict]) -> dict:
    """The bandwidth readings of every ours worker as one: their median, and every timed run."""
    per_worker = [r["bytes_per_s"] for r in readings]
    return {"bytes_per_s": statistics.median(per_worker), "array_bytes": readings[0]["array_bytes"],
            "bytes_counted": readings[0]["bytes_counted"],
            "method": readings[0]["method"] + ", one reading per ours worker process, median of those",
            "bytes_per_s_workers": per_worker, "runs_ms": [t for r in readings for t in r["runs_ms"]]}


def case_result(name: str, i: int, ours: list[dict], theirs: list[dict] | None, bandwidth: float) -> dict:
    """Case ``i`` of model ``name`` from every round's workers."""
    oc = [r["cases"][i] for r in ours]
    batch, sampler = oc[0]["batch"], oc[0]["sampler"]
    t = {k: [c["times"][k] for c in oc] for k in ("e2e", "prefill", "decode")}
    gen, pre, dec = summary(t["e2e"]), summary(t["prefill"]), summary(t["decode"], 1e3 / (NEW_TOKENS - 1))
    first_call_s = statistics.median(c["first_call_s"] for c in oc)
    step_bytes = oc[0]["bytes_per_step"]
    res = {
        "model": name, "batch": batch, "sampler": sampler,
        "ours": {
            "first_call_s": first_call_s,
            "compile_s": first_call_s - gen["median"] / 1e3,  # first call minus a steady call
            "generate_ms": gen,
            "prefill_ms": pre,
            "decode_ms_per_step": dec,
            "overhead_ms": gen["median"] - pre["median"] - dec["median"] * (NEW_TOKENS - 1),
            "tokens_per_s": batch * NEW_TOKENS / (gen["median"] / 1e3),
            "bytes_per_step": step_bytes,
            "roofline_fraction": step_bytes / (dec["median"] / 1e3) / bandwidth,
        },
    }
    if theirs is not None:
        tc = [r["cases"][i] for r in theirs]
        hf = summary([c["times"] for c in tc])
        res["theirs"] = {"generate_ms": hf, "tokens_per_s": batch * NEW_TOKENS / (hf["median"] / 1e3)}
        res["ratio"], res["ratio_rounds"] = speed_ratios(t["e2e"], [c["times"] for c in tc])
        if sampler == "greedy":  # round 1 of each side; every round must repeat its side's tokens
            same = np.array(oc[0]["tokens"]) == np.array(tc[0]["tokens"])
            cols = np.flatnonzero(~same.all(axis=0))
            res |= {"greedy_tokens_match": bool(same.all()), "matching_tokens": int(same.sum()),
                    "compared_tokens": int(same.size),
                    "first_mismatch": int(cols[0]) if cols.size else None,
                    "tokens_same_every_round": all(c["tokens"] == cs[0]["tokens"] for cs in (oc, tc) for c in cs)}
    targets = {}
    if (name, batch) in RATIO_TARGETS and "ratio" in res:
        targets[f"ratio >= {RATIO_TARGETS[name, batch]}"] = res["ratio"] >= RATIO_TARGETS[name, batch]
    if (name, batch) in ROOFLINE_TARGETS:
        goal = ROOFLINE_TARGETS[name, batch]
        targets[f"roofline_fraction >= {goal}"] = res["ours"]["roofline_fraction"] >= goal
    if targets:
        res["targets"] = targets
    return res


def model_result(name: str, runs: dict[str, list[dict]], bandwidth: float) -> tuple[dict, list[dict]]:
    """(the model's info, its cases) from every round's workers."""
    ours, theirs = runs["ours"], runs.get("theirs")
    info = dict(ours[0]["info"])
    if theirs is not None:
        diff = max(r["max_abs_logit_diff"] for r in theirs)
        info |= {"hf_attn_implementation": theirs[0]["hf_attn_implementation"], "max_abs_logit_diff": diff,
                 "logits_match_1e-3": diff <= 1e-3}
    return info, [case_result(name, i, ours, theirs, bandwidth) for i in range(len(ours[0]["cases"]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="both", help=f"{', '.join(MODELS)} or both (= small and gpt2-124m)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype of ours (weights and KV cache); HF is float32")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sampler", choices=[*SAMPLERS, "both"], default="both")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed runs per case per side per round (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="worker processes per side and model, alternating (default 3; 1 with --no-torch)")
    ap.add_argument("--no-torch", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--hf", default=None, metavar="DIR",
                    help="decode the weights of this Hugging Face GPT-2 or LLaMA folder (arlm_jax.from_hf on "
                         "our side, AutoModelForCausalLM on HF's) instead of --model")
    ap.add_argument("--out", default=None)
    args = parse_or_work(ap, WORKERS)
    if args is None:
        return

    if not args.hf and args.model not in (*MODELS, "both"):
        ap.error(f"--model {args.model!r}: choose {', '.join(MODELS)} or both")
    with_torch = not args.no_torch and importable("torch", "transformers")
    if with_torch and args.dtype != "float32":
        ap.error("--dtype bfloat16 compares against nothing: add --no-torch (the HF side is float32)")
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be at least 1")
    sides = ["ours", "theirs"] if with_torch else ["ours"]
    rounds = args.rounds or (3 if with_torch else 1)
    names = model_names(args.model, args)
    date = datetime.datetime.now().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as inputs:
        if with_torch:
            run_worker(SCRIPT, [*sys.argv[1:], "--inputs", inputs], "prepare")
        # each worker parses the parent's own command line; the flags added last override it
        runs = {name: alternate(SCRIPT, {side: [*sys.argv[1:], "--model", name, "--inputs", inputs]
                                         for side in sides}, rounds, label=f"bench_decode {name}")
                for name in names}
    first = runs[names[0]]["ours"][0]
    bw = bandwidth_of([r["bandwidth"] for name in names for r in runs[name]["ours"]])
    result = {
        "date": date,
        "jax_version": first["jax_version"], "device": first["device"],
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS, "repeats": args.repeats,
        "rounds": rounds, "method": METHOD if with_torch else METHOD_ALONE,
        "bandwidth": bw, "bytes_per_step_formula": BYTES_FORMULA,
        "roofline_formula": "bytes_per_step / decode step seconds / bandwidth.bytes_per_s",
        "models": {}, "cases": [],
    }
    for name in names:
        result["models"][name], cases_ = model_result(name, runs[name], bw["bytes_per_s"])
        result["cases"] += cases_
    if with_torch:
        result["torch"] = runs[names[0]]["theirs"][0]["torch"]
    result["targets"] = {f"{c['model']} B{c['batch']} {c['sampler']}: {k}": v
                         for c in result["cases"] for k, v in c.get("targets", {}).items()}
    write_result(result, args.out, f"bench_decode_{names[0] if args.hf else args.model}.json")


if __name__ == "__main__":
    main()
