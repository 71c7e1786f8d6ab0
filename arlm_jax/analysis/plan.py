"""``arlm plan``: will this config fit, on that mesh, on that accelerator? Answered on a laptop.

The train step and the decode step are lowered and compiled ahead of time for a mesh of
*simulated* CPU devices from abstract inputs only (``jax.ShapeDtypeStruct`` with shardings: no
array is ever allocated), and XLA's own analyses of the compiled per-device program give:

- memory per device: parameters, optimizer state and the batch / KV cache (from the shardings),
  and the compiler's temporaries (``compiled.memory_analysis()``);
- FLOPs per step per device (``compiled.cost_analysis()``). XLA counts a loop body once, so the
  family's loop (the Transformer's layer scan, a recurrent model's time scan) is corrected by
  compiling the same step with one and with two iterations in the loop body (``Family.unrolled``):
  total = F(1) + (L - 1) x (F(2) - F(1)), L = ``Family.depth`` (layers, or time steps).

The temporaries come from XLA:CPU's schedule and fusion, not the TPU or GPU compiler's, so
they are an estimate (docs/scale-out.md says how far they were off where it was measured).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from arlm_jax.analysis.memory import tree_bytes_per_device
from arlm_jax.config import RunConfig
from arlm_jax.errors import ConfigError
from arlm_jax.decode.generate import decode_step, prefill
from arlm_jax.models import family_of
from arlm_jax.parallel.mesh import ShardingError, make_mesh
from arlm_jax.parallel.rules import fit_spec, in_mesh
from arlm_jax.parallel.shardings import abstract_with_shardings, batch_sharding, param_shardings
from arlm_jax.train.optim import make_optimizer
from arlm_jax.train.step import init_state, make_train_step

GiB, MiB = 2 ** 30, 2 ** 20
# Memory per chip, all in binary units: TPU v5e 16 GiB and v5p 95 GiB of HBM; H100 SXM and H200
# as nvidia-smi reports their total (81559 MiB and 143771 MiB; sold as "80 GB" and "141 GB").
ACCELERATORS = {"tpu-v5e": 16 * GiB, "tpu-v5p": 95 * GiB, "h100": 81559 * MiB, "h200": 143771 * MiB}


def simulate_devices(n: int) -> list[jax.Device]:
    """``n`` CPU devices to compile for. Must run before JAX starts its CPU backend."""
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass  # already started: fine if it already has n devices
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise ShardingError(f"plan: devices={n} but JAX's CPU backend already started with "
                            f"{len(devices)}; run arlm plan in a fresh process")
    return devices[:n]


def _flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def _memory(compiled: Any) -> dict:
    m = compiled.memory_analysis()
    return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
            "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
            "peak": m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes}


def _train_program(run: RunConfig, mesh, unroll: int | None = None):
    cfg, tc = run.model, run.train
    if unroll is not None:
        cfg = family_of(cfg).unrolled(cfg, unroll)
    opt = make_optimizer(tc, cfg)
    state = jax.eval_shape(lambda: init_state(jax.random.key(0), cfg, opt))
    state = abstract_with_shardings(state, family_of(cfg).param_axes(state.params), mesh)
    batch = {"tokens": jax.ShapeDtypeStruct((tc.batch_size, run.seq_len + 1), jnp.int32,
                                            sharding=batch_sharding(mesh))}
    compiled = make_train_step(cfg, tc, opt, mesh=mesh).lower(state, batch).compile()
    return compiled, state, batch


def _decode_program(run: RunConfig, mesh, batch: int, length: int):
    cfg = run.model
    fam = family_of(cfg)
    params = jax.eval_shape(lambda: fam.decode_params(fam.init(jax.random.key(0), cfg), cfg))
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params,
                          param_shardings(params, fam.param_axes(params), mesh))
    prompts = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
    state = jax.eval_shape(lambda p, t: prefill(p, cfg, t, jnp.ones((batch,), jnp.int32),
                                                jax.random.key(0), length, None, (), 0)[0],
                           params, prompts)

    def place(a: Any, names: tuple) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, fit_spec(a.shape, names, mesh)))

    def rows(a: Any) -> tuple:  # the decode loop's own fields: rows over the batch axes
        return ("batch",) + (None,) * (a.ndim - 1) if a.ndim else ()
    model_state = jax.tree.map(place, state.model, fam.state_axes(state.model))  # the family's layout
    state = jax.tree.map(lambda a: place(a, rows(a)), state.replace(model=None)).replace(model=model_state)
    step = jax.jit(in_mesh(lambda p, s: decode_step(p, cfg, s)[0:2], mesh), donate_argnums=1)
    return step.lower(params, state).compile(), params, state


def plan(run: RunConfig, devices: list[jax.Device], *, decode_batch: int = 1,
         decode_len: int | None = None) -> dict:
    """Per-device memory, FLOPs per step and fit, for training and for decoding ``run.model``.

    ``devices`` (from ``simulate_devices``) carry the mesh ``run.mesh`` asks for; nothing is
    allocated. Sizes are bytes; FLOPs are per device per step (train: one optimizer step of
    ``train.batch_size`` x ``seq_len`` tokens; decode: one new token for ``decode_batch`` rows
    with a ``decode_len``-slot cache).
    """
    run.validate()
    mc, cfg = run.mesh, run.model
    fam = family_of(cfg)
    if fam.fit is not None:
        raise ConfigError(f"plan: model.family={cfg.family!r} is fitted (counted), not trained by a step this "
                          f"plans; its tables' sizes come from the corpus: arlm train prints them")
    mesh = make_mesh(mc.data, mc.fsdp, mc.tensor, devices)
    ctx = fam.context_len(cfg)
    decode_len = decode_len or ctx or run.seq_len
    if not 0 < decode_len <= (ctx or decode_len):
        raise ShardingError(f"plan: decode_len={decode_len} must be in 1..model.max_len={ctx}")
    if decode_batch < 1:
        raise ShardingError(f"plan: decode_batch={decode_batch} must be >= 1")

    compiled, state, batch = _train_program(run, mesh)
    train_flops = _flops(compiled)
    if fam.unrolled is not None:  # XLA counts a loop body once: count one and two iterations in it
        per = [_flops(_train_program(run, mesh, unroll=n)[0]) for n in (1, 2)]
        train_flops = per[0] + (fam.depth(cfg, run.seq_len) - 1) * (per[1] - per[0])
    train = {"params": tree_bytes_per_device(state.params), "opt_state": tree_bytes_per_device(state.opt_state),
             "batch": tree_bytes_per_device(batch), **_memory(compiled), "flops": train_flops}

    # a decode step reads the decode layout (the Transformer's is unrolled): XLA's count is whole
    dec_compiled, dparams, dstate = _decode_program(run, mesh, decode_batch, decode_len)
    decode = {"params": tree_bytes_per_device(dparams), "kv_cache": tree_bytes_per_device(dstate.model), **_memory(dec_compiled),
              "flops": _flops(dec_compiled)}

    fits = {name: {"train": train["peak"] <= cap, "decode": decode["peak"] <= cap}
            for name, cap in ACCELERATORS.items()}
    return {"preset": run.preset, "mesh": dict(mesh.shape), "devices": mesh.devices.size,
            "dtype": cfg.dtype, "remat": getattr(cfg, "remat", "none"), "batch_size": run.train.batch_size,
            "seq_len": run.seq_len, "decode_batch": decode_batch, "decode_len": decode_len,
            "train": train, "decode": decode, "fits": fits}


def format_plan(p: dict) -> str:
    """The plan as a short table for the terminal."""
    gib = lambda b: f"{b / GiB:8.2f} GiB"  # noqa: E731
    t, d = p["train"], p["decode"]
    mesh = " x ".join(f"{k}={v}" for k, v in p["mesh"].items())
    lines = [f"{p['preset']} on {p['devices']} devices ({mesh}), {p['dtype']}, remat={p['remat']}",
             f"train step: batch {p['batch_size']} x {p['seq_len']} tokens; decode step: "
             f"{p['decode_batch']} rows, {p['decode_len']}-slot cache",
             "per device                  train        decode",
             f"  parameters          {gib(t['params'])}  {gib(d['params'])}",
             f"  optimizer state     {gib(t['opt_state'])}",
             f"  batch / KV cache    {gib(t['batch'])}  {gib(d['kv_cache'])}",
             f"  temporaries (XLA)   {gib(t['temporaries'])}  {gib(d['temporaries'])}",
             f"  peak                {gib(t['peak'])}  {gib(d['peak'])}",
             f"  FLOPs per step      {t['flops']:12.4g}  {d['flops']:12.4g}",
             "fits (peak <= memory per chip):"]
    for name, cap in ACCELERATORS.items():
        ok = p["fits"][name]
        lines.append(f"  {name:8} {cap / GiB:6.1f} GiB   train {'yes' if ok['train'] else 'NO ':3}   "
                     f"decode {'yes' if ok['decode'] else 'NO'}")
    return "\n".join(lines)
