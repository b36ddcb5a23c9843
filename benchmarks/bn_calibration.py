"""How many calibration images does a subnet's BatchNorm need, and what did momentum cost?

For a trained classification supernet (a `evonas_jax.train` workdir), evaluates the largest, the
smallest and N random subnets (fixed seed) on the validation split with their BatchNorm
statistics set three ways:

  * "shared":      the supernet's running statistics as trained (no recalibration);
  * "momentum_n":  n train-mode forwards with momentum 0.9 starting from the shared statistics
                   (what evonas_jax did before `evonas_jax.evaluate.bn`; keeps 0.9**n of them),
                   reimplemented here with flax's own mutable update;
  * "exact_m":     `evonas_jax.evaluate.bn` (reset, pooled moments) over m calibration images.

The calibration images are the same train-split batches (128 each) for every method; the
largest exact set is the reference the others are compared with ("gap" = mean |acc - ref|).

  python benchmarks/bn_calibration.py --workdir WORKDIR/train [--archs 8] [--val 2000]
      -> benchmarks/results/bn_calibration.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from evonas_jax import data as data_lib  # noqa: E402
from evonas_jax.search_lib import load_supernet  # noqa: E402
from evonas_jax.space import arch_masks  # noqa: E402
from evonas_jax.supernet_train import make_bn_step, make_eval_step, recalibrate_bn  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True, help="a finished evonas_jax.train workdir")
  ap.add_argument("--archs", type=int, default=8, help="random archs besides largest/smallest")
  ap.add_argument("--val", type=int, default=2000, help="validation images")
  ap.add_argument("--exact", default="128,512,2048", help="exact-set sizes (multiples of 128)")
  ap.add_argument("--momentum", default="1,4,20", help="momentum forwards (batches of 128)")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                "bn_calibration.json"))
  a = ap.parse_args()

  space, model, variables, data_cfg, info, rt = load_supernet(a.workdir)
  if rt is not None and rt.name != "classification":
    raise SystemExit("bn_calibration.py measures classification supernets only")
  exact = [int(x) for x in a.exact.split(",")]
  mom = [int(x) for x in a.momentum.split(",")]
  need = max(max(exact) // 128, max(mom))
  it = data_lib.train_iterator(data_cfg, 128, seed=1)
  calib = [next(it)["image"] for _ in range(need)]
  val = []
  for b in data_lib.eval_iterator(data_cfg, "validation", 500):
    val.append(b)
    if sum(int(v["mask"].sum()) for v in val) >= a.val:
      break
  eval_step, bn_step = make_eval_step(model), make_bn_step(model)
  rng = np.random.default_rng(0)
  archs = [("largest", space.largest()), ("smallest", space.smallest())]
  archs += [(f"random{i}", space.decode(space.sample(int(rng.integers(2**31)))))
            for i in range(a.archs)]

  def acc(v, masks):
    c = n = 0.0
    for b in val:
      ci, ni = eval_step(v, b["image"], b["label"], b["mask"], masks)
      c, n = c + float(ci), n + float(ni)
    return c / n

  def momentum(v, masks, k):
    bs = v["batch_stats"]
    for images in calib[:k]:
      bs = bn_step({**v, "batch_stats": bs}, images, masks)
    return {**v, "batch_stats": bs}

  rows, t0 = [], time.time()
  for name, arch in archs:
    masks = arch_masks(space, arch)
    r = {"name": name, "genome": space.encode(arch).tolist(), "shared": acc(variables, masks)}
    for k in mom:
      r[f"momentum_{k}"] = acc(momentum(variables, masks, k), masks)
    for m in exact:
      r[f"exact_{m}"] = acc(recalibrate_bn(bn_step, variables, calib[:m // 128], masks), masks)
    rows.append(r)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                      if k != "genome"}), flush=True)
  ref = f"exact_{max(exact)}"
  methods = ["shared"] + [f"momentum_{k}" for k in mom] + [f"exact_{m}" for m in exact]
  summary = {m: {"mean_acc": float(np.mean([r[m] for r in rows])),
                 "gap_to_ref": float(np.mean([abs(r[m] - r[ref]) for r in rows]))}
             for m in methods}
  out = {"workdir_config": os.path.basename(os.path.normpath(a.workdir)), "reference": ref,
         "val_images": int(sum(int(v["mask"].sum()) for v in val)), "summary": summary,
         "archs": rows, "seconds": time.time() - t0, "device": jax.devices()[0].device_kind,
         "note": "accuracy on the validation split; gap_to_ref = mean |acc - acc(reference)|"}
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  for m in methods:
    print(f"{m:>12}: mean acc {summary[m]['mean_acc']:.4f}  gap to {ref} "
          f"{summary[m]['gap_to_ref']:.4f}")


if __name__ == "__main__":
  main()
