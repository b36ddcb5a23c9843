"""The quickstart, measured: `make quickstart`'s two commands, timed, and what they produced.

Runs the training job (configs/quickstart.py: ViT teacher, then the CA-DDKD supernet) and the
search (configs/search_quickstart.py: NSGA-II with DMMPE fitness) in a fresh workdir, with the
interpreter running this script, and writes

  {"wall_seconds", "stages": {"setup"?, "teacher", "supernet", "search"}, "teacher_val",
   "largest_val", "smallest_val", "largest_test", "smallest_test",
   "front": [{"genome", "val_acc", "macs", "latency_ms"}, ...], "front_min_val",
   "front_spearman_acc_macs", "hypervolume", "goals": {...}, "device", "compile_cache"}

--setup_seconds: the time `make setup` took in the fresh clone this is run from (measured by
the caller, e.g. `time make setup`), added as stage "setup" and to wall_seconds.
--cold: use an empty XLA compile cache (what a fresh machine pays), not ~/.cache/evonas_jax.

  python benchmarks/quickstart.py [--workdir DIR] [--cold] [--setup_seconds S]
      -> benchmarks/results/quickstart.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GOALS = {"teacher_val": 0.88, "largest_val": 0.88, "smallest_val": 0.82, "front_min_val": 0.80,
         "wall_seconds_max": 600}


def run(args, env) -> float:
  t = time.time()
  subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, check=True)
  return time.time() - t


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="")
  ap.add_argument("--cold", action="store_true")
  ap.add_argument("--setup_seconds", type=float, default=None)
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "quickstart.json"))
  a = ap.parse_args()
  work = a.workdir or tempfile.mkdtemp(prefix="evonas_quickstart_")
  if os.path.exists(os.path.join(work, "train")):
    raise SystemExit(f"{work}/train exists: give a fresh --workdir (this measures a full run)")
  env = dict(os.environ)
  if a.cold:
    env["EVONAS_JAX_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="evonas_xla_cold_")
  train_dir, search_dir = os.path.join(work, "train"), os.path.join(work, "search")
  t_train = run(["evonas_jax.train", "--config", "configs/quickstart.py", "--workdir", train_dir],
                env)
  t_search = run(["evonas_jax.search", "--config", "configs/search_quickstart.py", "--workdir",
                  search_dir, f"--config.supernet_workdir={train_dir}"], env)
  with open(os.path.join(train_dir, "results.json")) as f:
    tr = json.load(f)
  with open(os.path.join(search_dir, "pareto.json")) as f:
    se = json.load(f)
  stages = dict(tr.get("stage_seconds", {}))
  # The process's own startup (imports, data) is in t_train, not in the trainer's stage times.
  stages["train_process_overhead"] = t_train - sum(stages.values())
  stages["search"] = t_search
  if a.setup_seconds is not None:
    stages["setup"] = a.setup_seconds
  front = sorted(({"genome": r["genome"], "val_acc": r["accuracy"], "macs": r["macs"],
                   "latency_ms": r["latency_ms"],
                   **({"measured_latency_ms": r["measured_latency_ms"]}
                      if "measured_latency_ms" in r else {})} for r in se["pareto"]),
                 key=lambda r: r["macs"])
  from scipy import stats
  acc, macs = [r["val_acc"] for r in front], [r["macs"] for r in front]
  sub = tr["subnets"]
  out = {
      "wall_seconds": sum(stages.values()),
      "stages": stages,
      "teacher_val": tr.get("teacher_val_acc"),
      "largest_val": sub["largest"]["val_acc"], "smallest_val": sub["smallest"]["val_acc"],
      "largest_test": sub["largest"].get("test_acc"),
      "smallest_test": sub["smallest"].get("test_acc"),
      "front": front, "front_min_val": float(min(acc)), "front_max_val": float(max(acc)),
      "front_spearman_acc_macs": (float(stats.spearmanr(macs, acc)[0]) if len(front) > 2
                                  else None),
      "hypervolume": se["hypervolume"], "num_evaluated": se["num_evaluated"],
      "dataset": tr["dataset"], "engine": tr.get("engine"), "compile": tr.get("compile"),
      "compile_cache": "cold (empty)" if a.cold else "default per-user cache",
      "device": _device(), "goals": GOALS,
  }
  out["goals_met"] = {
      "teacher_val": (out["teacher_val"] or 0) >= GOALS["teacher_val"],
      "largest_val": out["largest_val"] >= GOALS["largest_val"],
      "smallest_val": out["smallest_val"] >= GOALS["smallest_val"],
      "front_min_val": out["front_min_val"] >= GOALS["front_min_val"],
      "wall_seconds": out["wall_seconds"] <= GOALS["wall_seconds_max"],
  }
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps({k: v for k, v in out.items() if k not in ("front", "compile")}, indent=1))


def _device() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "cpu")
  except OSError:
    model = "cpu"
  return f"{model}, {os.cpu_count()} cores"


if __name__ == "__main__":
  main()
