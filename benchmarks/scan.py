"""Selective-scan benchmark: forward and forward+backward time and achieved GB/s.

Writes ``benchmarks/results/scan_<device>.json`` (``<device>`` is
``jax.default_backend()``: ``cpu`` or ``gpu``).

Backends timed (each where available):

* ``reference``: the package's ``lax.scan`` path (baseline for all ratios).
* ``pallas``: the Pallas Triton kernels (GPU only).
* ``associative``: ``lax.associative_scan`` over ``(exp(dA), dB*u)`` pairs.
* ``pallas_interpret`` (CPU): the kernels in interpret mode.  Meant as a
  correctness path, but XLA:CPU runs its small per-program loops fast, so it
  is timed everywhere on CPU for comparison with the reference.
* ``naive_loop`` (CPU): a Python loop over time with numpy vectorised over
  ``(batch, dim, state)``, timed on a reduced length (``--naive-length``) and
  scaled linearly to the full length (the loop is O(length)); both numbers are
  reported.

Shapes (``batch, dim, length, state, groups``):

* ``mamba_l1024`` / ``mamba_l4096``: ``(8, 1536, L, 16, 1)``, Mamba-130M-like.
* ``ss2d_56x56``: VMamba SS2D stage 1 at 224px, ``(8, 4*192, 56*56, 16, 4)``:
  the 4 cross-scan directions of 192 channels are folded into ``dim`` and each
  direction has its own B/C group.

On CPU the default run shrinks batch 8 -> 2 and dim by 4 so that it finishes
in a few minutes (and the reference backward's per-step residuals fit in
memory); ``--full`` uses the full shapes; ``--tiny`` (plumbing checks, e.g.
``launch/gpu_check.sh --dry-run``) runs batch 1, dim <= 32, length <= 64 in
seconds.  The JSON records both the shape that was run and the full shape.

GB/s uses a minimal-traffic model: every input read once and every output
written once (fwd: u, delta, z, B, C, A, D, delta_bias -> y; fwd+bwd adds
reading them again with dy and writing du, ddelta, dz, dA, dB, dC, dD,
d(delta_bias)).  Intermediates (states, checkpoints) are not counted, so this
is the achievable-at-best bandwidth, comparable to the device peak.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.kernels import selective_scan
from evonas_jax.kernels.scan_reference import prepare_delta

F32 = jnp.float32
FULL_SHAPES = {
    "mamba_l1024": (8, 1536, 1024, 16, 1),
    "mamba_l4096": (8, 1536, 4096, 16, 1),
    "ss2d_56x56": (8, 4 * 192, 56 * 56, 16, 4),
}
# HBM bandwidth in GB/s by device_kind prefix (vendor datasheets).
PEAK_GBPS = {"NVIDIA H100 80GB HBM3": 3350.0, "NVIDIA H100 PCIe": 2000.0, "NVIDIA H200": 4800.0,
             "NVIDIA A100-SXM4-80GB": 2039.0, "NVIDIA A100-SXM4-40GB": 1555.0}


def tiny(shape):
    """Batch 1, dim <= 32 (still a multiple of the groups), length <= 64."""
    b, d, l, n, g = shape
    return (1, min(d, 32), min(l, 64), n, g)


def reduced(shape, device):
    if device != "cpu":
        return shape
    b, d, l, n, g = shape
    return (2, d // 4, l, n, g)


def make_inputs(b, d, l, n, g, dtype, seed=0):
    """Random ``(u, delta, A, B, C, D, z, delta_bias)`` in the op's layouts."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 8)
    bc = (b, n, l) if g == 1 else (b, g, n, l)
    return (jax.random.normal(ks[0], (b, d, l), dtype),
            (jax.random.uniform(ks[1], (b, d, l), F32, -4.0, -1.0)).astype(dtype),
            -jnp.exp(jax.random.normal(ks[2], (d, n), F32) * 0.5),
            jax.random.normal(ks[3], bc, dtype), jax.random.normal(ks[4], bc, dtype),
            jax.random.normal(ks[5], (d,), F32), jax.random.normal(ks[6], (b, d, l), dtype),
            jax.random.uniform(ks[7], (d,), F32, -0.5, 0.5))


def associative_scan(u, delta, A, B, C, D, z, delta_bias):
    """Selective scan via ``lax.associative_scan`` (materialises (b, d, l, n))."""
    b, d, l = u.shape
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]
    g, n = B.shape[1], B.shape[2]
    dt = prepare_delta(delta, delta_bias, True).reshape(b, g, d // g, l, 1)
    a = jnp.exp(dt * A.reshape(g, d // g, 1, n))
    bx = dt * u.astype(F32).reshape(b, g, d // g, l, 1) * jnp.swapaxes(B, 2, 3)[:, :, None]

    def combine(x, y):
        return x[0] * y[0], y[0] * x[1] + y[1]

    _, h = jax.lax.associative_scan(combine, (a, bx), axis=3)
    y = jnp.sum(h * jnp.swapaxes(C, 2, 3)[:, :, None].astype(F32), -1).reshape(b, d, l)
    y = (y + D[:, None] * u) * jax.nn.silu(z.astype(F32))
    return y.astype(u.dtype)


def naive_loop(u, delta, A, B, C, D, z, delta_bias):
    """Python loop over time, numpy over (batch, dim, state)."""
    u, delta, A, B, C, D, z, bias = (np.asarray(x, np.float32) for x in
                                     (u, delta, A, B, C, D, z, delta_bias))
    b, d, l = u.shape
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]
    rep = d // B.shape[1]
    dt = np.logaddexp(delta + bias[:, None], 0.0)
    h = np.zeros((b, d, A.shape[1]), np.float32)
    y = np.empty_like(u)
    for t in range(l):
        Bt, Ct = np.repeat(B[..., t], rep, axis=1), np.repeat(C[..., t], rep, axis=1)
        h = np.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bt
        y[:, :, t] = np.sum(h * Ct, -1)
    zz = z
    return (y + D[:, None] * u) * zz / (1.0 + np.exp(-zz))


def scan_fn(backend):
    if backend == "associative":
        return associative_scan
    return lambda *a: selective_scan(*a, delta_softplus=True, backend=backend)


def time_call(fn, args, repeats, warmup=1):
    """(median seconds, first-call seconds incl. compile)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), first


def traffic_bytes(args, bwd):
    """Minimal HBM traffic (see module docstring)."""
    nbytes = sum(x.size * x.dtype.itemsize for x in args)
    y = args[0].size * args[0].dtype.itemsize
    if not bwd:
        return nbytes + y
    # fwd (inputs + y) + bwd (inputs again + dy, write one grad per input)
    return (nbytes + y) + (nbytes + y) + nbytes


def bench_backend(backend, args, repeats, with_bwd=True):
    f = jax.jit(scan_fn(backend))
    out = {}
    t, first = time_call(f, args, repeats)
    out["fwd_s"], out["fwd_first_call_s"] = t, first
    out["fwd_gbps"] = traffic_bytes(args, False) / t / 1e9
    if with_bwd:
        dy = jax.random.normal(jax.random.PRNGKey(9), args[0].shape, args[0].dtype)
        g = jax.jit(jax.grad(lambda a, dy: jnp.sum(scan_fn(backend)(*a).astype(F32) * dy)))
        t, first = time_call(g, (args, dy), repeats)
        out["fwd_bwd_s"], out["fwd_bwd_first_call_s"] = t, first
        out["fwd_bwd_gbps"] = traffic_bytes(args, True) / t / 1e9
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="selective-scan benchmark")
    ap.add_argument("--full", action="store_true", help="full shapes on CPU too (slow, ~10+ GB)")
    ap.add_argument("--tiny", action="store_true",
                    help="batch 1, dim <= 32, length <= 64: a plumbing check, not a benchmark")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shapes", default=",".join(FULL_SHAPES))
    ap.add_argument("--naive-length", type=int, default=256)
    ap.add_argument("--no-associative", action="store_true")
    ap.add_argument("--peak-gbps", type=float, default=None,
                    help="memory bandwidth limit of the device (GPU default: by device_kind)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    device = jax.default_backend()
    dev = jax.devices()[0]
    dtype = jnp.dtype(args.dtype)
    repeats = args.repeats or (5 if device == "cpu" else 20)
    # Longest table key that the device kind starts with ("NVIDIA H200" covers "... NVL").
    kinds = sorted((k for k in PEAK_GBPS if dev.device_kind.startswith(k)), key=len)
    peak = args.peak_gbps or (PEAK_GBPS[kinds[-1]] if device == "gpu" and kinds else None)
    result = {
        "device": device, "device_kind": dev.device_kind, "jax": jax.__version__,
        "host": platform.processor() or platform.machine(), "dtype": args.dtype,
        "repeats": repeats, "timing": "median of repeats after one warm-up call, "
        "jax.block_until_ready; times in seconds",
        "traffic_model": "minimal: each input read once, each output written once "
                         "(fwd_bwd: fwd + bwd re-read + dy + grads)",
        "peak_gbps": peak, "loadavg_start": os.getloadavg(), "shapes": {},
    }
    names = [s for s in args.shapes.split(",") if s]
    for name in names:
        full = FULL_SHAPES[name]
        shape = tiny(full) if args.tiny else full if args.full else reduced(full, device)
        b, d, l, n, g = shape
        x = make_inputs(b, d, l, n, g, dtype)
        entry = {"shape_bdlng": shape, "full_shape_bdlng": full, "reduced": shape != full,
                 "backends": {}}
        backends = ["reference"] + (["pallas"] if device == "gpu" else [])
        if not args.no_associative:
            backends.append("associative")
        if device == "cpu":
            backends.append("pallas_interpret")
        for be in backends:
            print(f"[{name} {shape}] {be} ...", flush=True)
            try:
                entry["backends"][be] = bench_backend(be, x, repeats)
            except Exception as e:  # e.g. out of memory for associative_scan
                entry["backends"][be] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print("   ", entry["backends"][be], flush=True)
        if device == "cpu":
            ln = min(args.naive_length, l)
            xs = make_inputs(b, d, ln, n, g, dtype)
            t0 = time.perf_counter()
            naive_loop(*xs)
            t = time.perf_counter() - t0
            entry["backends"]["naive_loop"] = {
                "measured_length": ln, "fwd_s_measured": t, "fwd_s": t * l / ln,
                "note": f"fwd only; timed at length {ln}, fwd_s scaled linearly to length {l}"}
        ref = entry["backends"]["reference"]
        for be, r in entry["backends"].items():
            for k in ("fwd", "fwd_bwd"):
                if f"{k}_s" in r and f"{k}_s" in ref:
                    # >1 means slower than the reference measured in this run
                    r[f"{k}_time_vs_reference"] = r[f"{k}_s"] / ref[f"{k}_s"]
            if peak:
                for k in ("fwd_gbps", "fwd_bwd_gbps"):
                    if k in r:
                        r[k.replace("_gbps", "_fraction_of_peak_bw")] = r[k] / peak
        result["shapes"][name] = entry

    # Other processes on a shared box skew CPU timings; record how busy it was.
    result["loadavg_end"] = os.getloadavg()
    out = Path(args.out) if args.out else (Path(__file__).parent / "results" / f"scan_{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
