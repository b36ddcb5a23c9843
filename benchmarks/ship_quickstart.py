"""From a Pareto point to a shipped model, measured: select under a budget, fine-tune, export to
ONNX and int8, and time it in onnxruntime, on a finished search (the quickstart's by default).

The sequence, as a user runs it (this script makes the same library calls):

  python -m evonas_jax.finetune --config configs/finetune_quickstart.py --workdir FT \
      --config.source=SEARCH --config.select="latency_ms<=B"
  python -m evonas_jax.export --workdir FT --formats onnx,int8 --platforms cpu

For `--members` budgets B (the front's slowest, median and fastest latency, so the first member
is the front's most accurate and the last its fastest), each subnet is fine-tuned and its
validation accuracy recorded before (supernet weights, exact BatchNorm statistics) and after.
The first fine-tuned member is exported to ONNX (checked against JAX) and int8 (accuracy and
batch-1 onnxruntime latency, fp32 vs int8). The lookup-table Spearman rho of both latency
backends is copied from `--latency_json` (benchmarks/latency_backends.py measures it on >= 30
random subnets; it is not re-measured here), the dense tasks' ONNX errors from
`--dense_onnx_json` (benchmarks/dense_onnx.py: the quickstart has no dense model).

  python benchmarks/ship_quickstart.py --search workdirs/quickstart/search \
      [--work DIR] [--members 3] [--steps N] -> benchmarks/results/ship_quickstart.json

Rerunning with the same --work reuses finished fine-tuning runs (and resumes interrupted ones).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def _load_config(path):
  spec = importlib.util.spec_from_file_location("ft_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def budgets(rows: list[dict], members: int) -> list[str]:
  """Latency budgets spread over the front: slowest, ..., fastest member's latency."""
  lat = sorted(float(r["latency_ms"]) for r in rows)
  qs = np.linspace(1.0, 0.0, members) if members > 1 else [1.0]
  out = []
  for q in qs:
    b = lat[int(round(q * (len(lat) - 1)))]
    out.append(f"latency_ms<={b!r}")   # repr: the exact value, so that member satisfies it
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--search", required=True, help="a finished search workdir (pareto.json)")
  p.add_argument("--work", default="", help="where the fine-tuning runs and the export go "
                 "(default <search>/../ship)")
  p.add_argument("--config", default=os.path.join(ROOT, "configs", "finetune_quickstart.py"))
  p.add_argument("--members", type=int, default=3)
  p.add_argument("--steps", type=int, default=0, help="fine-tuning steps (0 = the config's)")
  p.add_argument("--batch_size", type=int, default=0, help="0 = the config's")
  p.add_argument("--int8_val_images", type=int, default=1000)
  p.add_argument("--int8_max_drop", type=float, default=0.01)
  p.add_argument("--latency_json", default=os.path.join(ROOT, "benchmarks", "results",
                                                        "latency_backends.json"))
  p.add_argument("--dense_onnx_json", default=os.path.join(ROOT, "benchmarks", "results",
                                                           "dense_onnx.json"))
  p.add_argument("--compile_cache_dir", default="")
  p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                               "ship_quickstart.json"))
  a = p.parse_args(argv)
  from evonas_jax import export_lib, front_select
  from evonas_jax.finetune import finetune_lib
  from evonas_jax.provenance import provenance
  t0 = time.time()
  search = os.path.abspath(a.search)
  work = os.path.abspath(a.work or os.path.join(search, "..", "ship"))
  rows = json.load(open(os.path.join(search, "pareto.json")))["pareto"]
  out = {"search": search, "finetune": [], "budgets": budgets(rows, a.members)}
  seen = set()
  ft_dirs = []
  for i, budget in enumerate(out["budgets"]):
    row = front_select.choose(rows, budget)
    genome = tuple(rows[row]["genome"])
    if genome in seen:
      continue
    seen.add(genome)
    ft = _load_config(a.config)
    ft.source, ft.select = search, budget
    if a.steps:
      ft.num_steps = a.steps
      ft.eval_every = a.steps
      ft.checkpoint_every = max(1, a.steps // 2)
    if a.batch_size:
      ft.batch_size = a.batch_size
    ft.compile_cache_dir = a.compile_cache_dir
    d = os.path.join(work, f"finetune_{i}")
    t = time.time()
    res_path = os.path.join(d, "results.json")
    res = (json.load(open(res_path)) if os.path.isfile(res_path)
           else finetune_lib.finetune(ft, d))
    sub, m = res["subnets"]["subnet"], res["metric"]
    out["finetune"].append({
        "budget": budget, "pareto_row": row, "genome": list(genome),
        "search_val": rows[row].get("accuracy"), "search_latency_ms": rows[row]["latency_ms"],
        "val_before": sub[f"before_val_{m}"], "val_after": sub[f"val_{m}"],
        "test_after": sub.get(f"test_{m}"), "steps": res["steps"],
        "seconds": round(time.time() - t, 1)})
    ft_dirs.append(d)
    print(f"[ship] {budget}: val {m} {sub[f'before_val_{m}']:.4f} -> {sub[f'val_{m}']:.4f}",
          flush=True)

  exp_dir = os.path.join(work, "export_0")
  t = time.time()
  res = export_lib.export_subnet(ft_dirs[0], None, exp_dir, formats="onnx,int8",
                                 platforms="cpu", overwrite=True,
                                 int8_max_drop=a.int8_max_drop,
                                 int8_val_images=a.int8_val_images)
  art = res.meta["artifacts"]
  i8 = art["int8"]
  out["export"] = {"folder": exp_dir, "genome": res.meta["genome"],
                   "seconds": round(time.time() - t, 1)}
  out["onnx_max_abs_diff"] = {
      "classification": art["onnx"]["check"]["outputs"]["logits"]["max_abs_diff"],
      "depth": None, "segmentation": None}
  # The quickstart has no dense model: their numbers come from benchmarks/dense_onnx.py (trained
  # ARC2017 depth / segmentation subnets), the worst output over its subnets and checks.
  if os.path.isfile(a.dense_onnx_json):
    dj = json.load(open(a.dense_onnx_json))
    for task in ("depth", "segmentation"):
      vals = [c["max_abs_diff"] for sub in dj.get(task, {}).values()
              for c in sub["calibration_check"].values()]
      vals += [v for sub in dj.get(task, {}).values()
               for v in sub["real_image_max_abs_diff"].values()]
      out["onnx_max_abs_diff"][task] = max(vals) if vals else None
    out["onnx_max_abs_diff"]["dense_source"] = os.path.relpath(a.dense_onnx_json, ROOT)
  out["int8"] = {"metric": i8["metric"], "metric_before": i8["metric_fp32"],
                 "metric_after": i8["metric_int8"], "drop": i8["drop"], "status": i8["status"],
                 "validation_images": i8["validation_images"],
                 "latency_ms_fp32": i8["latency_ms_fp32"]["p50"],
                 "latency_ms_int8": i8["latency_ms_int8"]["p50"],
                 "latency_p90_ms_fp32": i8["latency_ms_fp32"]["p90"],
                 "latency_p90_ms_int8": i8["latency_ms_int8"]["p90"],
                 "speedup": i8["speedup"], "threads": i8["threads"]}
  if os.path.isfile(a.latency_json):
    lj = json.load(open(a.latency_json))
    out["lut_spearman"] = {b: {"rho": lj[b]["rho"], "n_archs": lj[b]["n_archs"]}
                           for b in ("xla", "onnxruntime") if b in lj}
    out["lut_spearman"]["source"] = os.path.relpath(a.latency_json, ROOT)
  else:
    out["lut_spearman"] = None
  out["wall_seconds"] = round(time.time() - t0, 1)
  out["provenance"] = provenance()
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps({k: out[k] for k in ("finetune", "onnx_max_abs_diff", "int8")}, indent=1))
  print(f"[ship] wrote {a.out}")
  return out


if __name__ == "__main__":
  main()
