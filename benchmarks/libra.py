"""LIBRA-NAS vs the best single proxy on every table of proxy scores + accuracies we have.

    python benchmarks/libra.py [--benchdata DIR] [--scores benchmarks/results/nb201_scores.csv]

Tables: NB201 Suite-Zero proxies (9,445 unique nets; CIFAR-10 / CIFAR-100 / ImageNet16-120),
the early NASLib Suite-Zero subsets (NB101, NB301, TNB101 micro/macro x 7 tasks), and our own
NB201 scores (bench output). Protocols: "paper" (select and evaluate on the same archs, as the
paper does) and "split" (select on a calibration half, evaluate on the disjoint other half; mean
over 5 random splits). Best single proxy = highest rho on the selection archs. Writes
benchmarks/results/libra.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from evonas_jax.proxies import libra  # noqa: E402
from evonas_jax.proxies.benchdata import (  # noqa: E402
    find_benchdata, load_naslib_early, load_nb201_table)

HERE = os.path.dirname(os.path.abspath(__file__))


def clean(scores: dict, acc, params):
  """Drop proxies missing on > 5 % of archs, then archs missing anything."""
  ok = np.isfinite(acc) & np.isfinite(params)
  keep = [k for k, v in scores.items() if np.mean(np.isfinite(v[ok])) > 0.95]
  for k in keep:
    ok &= np.isfinite(scores[k])
  return {k: scores[k][ok] for k in keep}, acc[ok], params[ok]


def evaluate(scores, acc, params, seed=0, splits=5, paper_n=1000):
  scores, acc, params = clean(scores, acc, params)
  n = len(acc)
  rng = np.random.default_rng(seed)
  out = {"n_archs": n, "proxies": sorted(scores)}
  # paper protocol: one sample of up to 1000 archs, selection and evaluation on it
  idx = rng.choice(n, min(paper_n, n), replace=False)
  sub = {k: v[idx] for k, v in scores.items()}
  for how in libra.COMBINE:
    r = libra.evaluate_libra(sub, acc[idx], params[idx], sub, acc[idx], how)
    out[f"paper_{how}"] = {k: r[k] for k in ("selected", "rho_libra_test", "best_single",
                                             "rho_best_single_test", "beats_best_single")}
  res = {how: [] for how in libra.COMBINE}
  for s in range(splits):
    perm = np.random.default_rng(seed + 1 + s).permutation(n)
    a, b = perm[: n // 2][:paper_n], perm[n // 2:]
    for how in libra.COMBINE:
      r = libra.evaluate_libra({k: v[a] for k, v in scores.items()}, acc[a], params[a],
                               {k: v[b] for k, v in scores.items()}, acc[b], how)
      res[how].append(r)
  for how, rs in res.items():
    out[f"split_{how}"] = {
        "rho_libra_test_mean": float(np.mean([r["rho_libra_test"] for r in rs])),
        "rho_best_single_test_mean": float(np.mean([r["rho_best_single_test"] for r in rs])),
        "beats_best_single_fraction": float(np.mean([r["beats_best_single"] for r in rs])),
        "selections": [r["selected"] for r in rs]}
  return out


def nb201_suite_zero(bd):
  t = load_nb201_table(bd)
  names = [k[len("sz_c10_"):] for k in t if k.startswith("sz_c10_")]
  out = {}
  for task, pre, acc in (("nb201_cifar10", "c10", t["cifar10"]),
                         ("nb201_cifar100", "c10", t["cifar100"]),
                         ("nb201_ImageNet16-120", "in16", t["ImageNet16-120"])):
    scores = {k: t[f"sz_{pre}_{k}"] for k in names}
    out[task] = evaluate(scores, acc, t[f"sz_{pre}_params"])
  return out


def naslib_early(bd):
  out = {}
  for tag, data in load_naslib_early(bd).items():
    for task, cols in data.items():
      scores = {k: v for k, v in cols.items() if k not in ("arch", "val_accuracy")}
      if "params" not in scores:
        continue
      out[f"{tag}_{task}"] = evaluate(scores, cols["val_accuracy"], scores["params"])
  return out


def ours(path, bd):
  if not os.path.exists(path):
    return {}
  t = load_nb201_table(bd)
  with open(path) as f:
    rows = list(csv.DictReader(f))
  idx = np.array([int(r["nb201_index"]) for r in rows])
  names = [k for k in rows[0] if k not in ("nb201_index", "arch_str")]
  scores = {k: np.array([float(r[k]) for r in rows]) for k in names}
  if "params" not in scores:
    return {}
  return {f"ours_nb201_{ds}": evaluate(scores, t[ds][idx], scores["params"])
          for ds in ("cifar10", "cifar100", "ImageNet16-120")}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--benchdata", default=None)
  ap.add_argument("--scores", default=os.path.join(HERE, "results", "nb201_scores.csv"))
  ap.add_argument("--out", default=os.path.join(HERE, "results", "libra.json"))
  a = ap.parse_args()
  bd = str(find_benchdata(a.benchdata))
  res = {}
  res.update(nb201_suite_zero(bd))
  res.update(naslib_early(bd))
  res.update(ours(a.scores, bd))
  summary = {}
  for proto in ("paper_log_rank", "paper_mean_rank"):
    wins = [k for k, v in res.items() if v[proto]["beats_best_single"]]
    summary[proto] = {"tasks": len(res), "libra_beats_best_single": len(wins)}
  for proto in ("split_log_rank", "split_mean_rank"):
    d = [v[proto]["rho_libra_test_mean"] - v[proto]["rho_best_single_test_mean"]
         for v in res.values()]
    summary[proto] = {"tasks": len(res),
                      "libra_better_on_mean": int(np.sum(np.array(d) > 0)),
                      "mean_rho_gain": float(np.mean(d))}
  out = {"summary": summary, "tasks": res,
         "protocol": __doc__.strip().splitlines()[5:9]}
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps(summary, indent=1))
  for k, v in res.items():
    p = v["paper_log_rank"]
    print(f"{k:32s} n={v['n_archs']:5d} libra={p['rho_libra_test']:+.3f} "
          f"best={p['best_single']}:{p['rho_best_single_test']:+.3f} sel={p['selected']}")


if __name__ == "__main__":
  main()
