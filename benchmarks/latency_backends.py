"""Latency lookup tables timed with XLA and with onnxruntime: build cost and ranking quality.

    python benchmarks/latency_backends.py [--num_archs 30] [--out benchmarks/results/latency_backends.json]

On the quickstart search space (evonas/tiny, 10 classes, 28x28x1 images, batch 1), for each
backend ("xla": jitted JAX programs on the first JAX device; "onnxruntime": the ONNX models the
export ships, on this CPU with 1 intra-op thread):
  * the table build: total seconds, and the compile (XLA) / conversion (jax2onnx) part apart
    from the timing part;
  * `num_archs` seeded random subnets (the same for both backends), each measured whole and
    sliced with that backend (`measure_latency`: median of `runs` calls after `warmup`);
  * Spearman rho of the table's prediction against that backend's own measurement, and the
    mean absolute % error; for onnxruntime also each subnet's conversion time and the ONNX vs
    JAX logits difference on 2 random images (a conversion check).
Writes {"xla": {...}, "onnxruntime": {...}, "device", "versions", "machine_load_note", ...}.
Runs on CPU; a random supernet stands in for trained weights (latency does not depend on them).
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from evonas_jax import latency, ort_latency  # noqa: E402
from evonas_jax.space import get_space  # noqa: E402

NUM_CLASSES, IMAGE_SHAPE = 10, (28, 28, 1)


def _versions() -> dict:
  import importlib.metadata as md
  out = {"python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "flax", "onnxruntime", "onnx", "jax2onnx", "numpy"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = None
  return out


def _load() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def run_backend(backend: str, space, archs, variables, args) -> dict:
  print(f"== {backend}: table ({_load()} load)", flush=True)
  t0 = time.perf_counter()
  table = latency.LatencyTable.build(space, NUM_CLASSES, IMAGE_SHAPE, warmup=args.table_warmup,
                                     runs=args.table_runs, backend=backend, threads=1,
                                     progress=False)
  build_s = time.perf_counter() - t0
  print(f"   {table.meta['num_ops']} ops, {build_s:.0f} s "
        f"(compile/convert {table.meta['compile_seconds']:.0f} s)", flush=True)
  images = np.random.default_rng(0).standard_normal((2, *IMAGE_SHAPE)).astype(np.float32)
  pred, meas, per_arch = [], [], []
  t1 = time.perf_counter()
  for i, arch in enumerate(archs):
    ta = time.perf_counter()
    rec = {"arch": arch.short() if hasattr(arch, "short") else str(arch),
           "blocks": int(sum(arch.depth_counts))}
    if backend == "onnxruntime":
      r = latency.measure_onnx_latency(space, arch, NUM_CLASSES, IMAGE_SHAPE, warmup=args.warmup,
                                       runs=args.runs, variables=variables, threads=1,
                                       check_images=images)
      ms = r["p50_ms"]
      rec.update(p90_ms=r["p90_ms"], convert_seconds=r["convert_seconds"], nodes=r["nodes"],
                 max_abs_diff=r["max_abs_diff"], max_abs_jax=r["max_abs_jax"])
    else:
      ms = latency.measure_latency(space, arch, NUM_CLASSES, IMAGE_SHAPE, warmup=args.warmup,
                                   runs=args.runs, variables=variables, backend="xla")
    p = table.predict(arch)
    rec.update(measured_ms=ms, predicted_ms=p, seconds=round(time.perf_counter() - ta, 2))
    pred.append(p)
    meas.append(ms)
    per_arch.append(rec)
    print(f"   [{i + 1:2d}/{len(archs)}] {rec['blocks']:2d} blocks  measured {ms:8.3f} ms  "
          f"predicted {p:8.3f} ms  ({rec['seconds']:.1f} s)", flush=True)
  pred, meas = np.array(pred), np.array(meas)
  out = {"rho": latency.spearman(pred, meas), "n_archs": len(archs),
         "mean_abs_pct_error": float(np.mean(np.abs(pred - meas) / meas) * 100),
         "table_build_seconds": round(build_s, 2),
         "table_compile_seconds": round(table.meta["compile_seconds"], 2),
         "table_timing_seconds": round(table.meta.get("timing_seconds", 0.0), 2),
         "table_num_ops": table.meta["num_ops"],
         "table_compile_seconds_per_op": round(table.meta["compile_seconds"] / table.meta["num_ops"], 3),
         "measure_seconds_total": round(time.perf_counter() - t1, 2),
         "table_device": table.meta["device"], "threads": table.meta.get("threads"),
         "warmup": args.warmup, "runs": args.runs,
         "table_warmup": args.table_warmup, "table_runs": args.table_runs,
         "table_entries": table.entries, "archs": per_arch}
  if backend == "onnxruntime":
    conv = [r["convert_seconds"] for r in per_arch]
    out["subnet_convert_seconds_mean"] = round(float(np.mean(conv)), 2)
    out["subnet_convert_seconds_max"] = round(float(np.max(conv)), 2)
    out["subnet_max_abs_diff"] = float(max(r["max_abs_diff"] for r in per_arch))
    out["table_convert_seconds_per_op"] = table.meta.get("convert_seconds_per_op")
  print(f"   rho {out['rho']:.3f} over {len(archs)} archs, mean |err| "
        f"{out['mean_abs_pct_error']:.1f} %", flush=True)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num_archs", type=int, default=30)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--runs", type=int, default=30)
  p.add_argument("--table_warmup", type=int, default=5)
  p.add_argument("--table_runs", type=int, default=20)
  p.add_argument("--backends", default="xla,onnxruntime")
  p.add_argument("--smoke", action="store_true",
                 help="a 1-block-per-stage, one-choice space (checks the script in ~1 min)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "latency_backends.json"))
  args = p.parse_args()
  space = get_space("evonas", "tiny")
  if args.smoke:
    import dataclasses
    space = dataclasses.replace(space, max_depths=(1, 1, 1, 1), mlp_choices=(2.0,),
                                expand_choices=(1.0,), d_state_choices=(16,))
  archs = [space.decode(g) for g in space.sample(args.seed, args.num_archs)]
  variables = latency._random_supernet(space, NUM_CLASSES, IMAGE_SHAPE)
  t0 = time.time()
  load_start = _load()
  res = {"space": "evonas/tiny" + (" (smoke: reduced)" if args.smoke else ""), "num_classes": NUM_CLASSES, "image_shape": list(IMAGE_SHAPE),
         "batch": 1, "seed": args.seed,
         "device": {"xla": latency.device_name(), "onnxruntime": ort_latency.device_string(),
                    "onnxruntime_info": ort_latency.device_description(),
                    "jax_devices": [str(d) for d in jax.devices()]},
         "versions": _versions()}
  for b in args.backends.split(","):
    res[b] = run_backend(b, space, archs, variables, args)
  res["wall_seconds"] = round(time.time() - t0, 1)
  res["machine_load_note"] = (
      f"run on a shared 2-core machine next to other jobs (a training run among them): load "
      f"average {load_start} at the start, {_load()} at the end (1/5/15 min). Absolute times "
      "and build seconds are inflated and noisy; XLA's CPU runtime uses its own thread pool, "
      "onnxruntime 1 intra-op thread.")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(res, f, indent=1)
  print(f"wrote {args.out} ({res['wall_seconds']:.0f} s)")


if __name__ == "__main__":
  main()
