"""NAS-Bench-201 proxy benchmark.

    python -m evonas_jax.proxies.bench --config configs/proxies_nb201.py --workdir W

Scores N NB201 archs (sampled deterministically from the 15,625, or `arch_indices`) with every
proxy in `config.proxies` on real CIFAR-10 images (the 20 foolbox test images, or TFDS cifar10),
in masked mode (vmap over archs, one compile per proxy), averaged over `num_seeds` inits. Writes
  W/nb201_scores.csv          nb201_index, arch_str, one column per proxy (registry names)
  W/nb201_correlations.json   Spearman + Kendall of each proxy vs the 200-epoch test accuracies
                              (cifar10 / cifar100 / ImageNet16-120) and vs Suite-Zero's values
                              of the same archs (same proxy name; our macs vs their flops)
Per-proxy scores are cached in W/scores/<proxy>.npy, so rerunning the command resumes.
With `search.enabled`, a training-free NSGA-II search over all 15,625 cells follows
(`tf_search.training_free_search`, objectives -`search.proxy` and the cost: #params, or with
`latency_device` the HW-NAS-Bench latency on that device), written to W/search/pareto.{json,csv}.
L-SWAG's band: `lswag.band = "auto"` runs the spike rule (lswag.select_band) on the layer terms of
`lswag.calib_archs` *other* random archs (no labels used), and records it in the JSON; the
calibration is cached in W/scores/lswag_calibration.json too, so a resumed run skips it.
"""
from __future__ import annotations

import csv
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from scipy import stats
from tqdm.auto import tqdm

from evonas_jax.data.cifar_samples import cifar10_batch
from evonas_jax.nn import nb201 as nbnet
from evonas_jax.proxies import get_proxy, nb201_proxy_model
from evonas_jax.proxies.benchdata import ACC_COLUMNS, load_nb201_table
from evonas_jax.proxies.lswag import bin_statistics, layer_terms, select_band
from evonas_jax.proxies.scoring import score_archs
from evonas_jax.space import nb201 as nbspace
from evonas_jax.workdir import open_workdir

# Our registry name -> Suite-Zero column (same definition in NASLib).
SUITE_ZERO_NAMES = {"fisher": "fisher", "grad_norm": "grad_norm", "grasp": "grasp",
                    "jacov": "jacov", "nwot": "nwot", "params": "params", "snip": "snip",
                    "synflow": "synflow", "macs": "flops"}


def select_archs(cfg, table) -> np.ndarray:
  if cfg.get("arch_indices"):
    idx = np.asarray(cfg.arch_indices, int)
  else:
    idx = np.sort(np.random.default_rng(cfg.arch_seed).choice(15625, cfg.num_archs, replace=False))
  return idx


def calibrate_band(cfg, model, params, batch, all_strs, exclude) -> dict:
  """L-SWAG band from the per-depth-bin layer statistic of random nets (paper §1.3 spike rule),
  on archs disjoint from the evaluated ones; no labels of accuracy are used."""
  rng = np.random.default_rng(cfg.arch_seed + 1)
  pool = np.setdiff1d(np.arange(len(all_strs)), exclude)
  idx = rng.choice(pool, cfg.lswag.calib_archs, replace=False)
  masks = nbspace.genome_to_masks(np.stack([nbspace.str_to_ops(s) for s in all_strs[idx]]))
  f = jax.jit(jax.vmap(lambda m, b: layer_terms(model, params, m, b, cfg.lswag.variance,
                                                cfg.lswag.num_splits), (0, None)))
  terms, active = [], []
  for s in tqdm(range(0, len(idx), cfg.arch_batch), desc="lswag band", leave=False):
    t, a = f(jax.tree.map(lambda x: x[s:s + cfg.arch_batch], masks), batch)
    terms.append(np.asarray(t))
    active.append(np.asarray(a))
  mean, std, cnt = bin_statistics(np.concatenate(terms), np.concatenate(active))
  band = select_band(mean, cfg.lswag.margin)
  return {"band": list(band), "bin_mean": mean.tolist(), "bin_std": std.tolist(),
          "bin_count": cnt.tolist(), "calib_nb201_indices": idx.tolist()}


def correlations(scores: dict, table, rows) -> dict:
  out = {}
  for name, s in scores.items():
    d = {}
    for ds in ACC_COLUMNS:
      acc = table[ds][rows]
      ok = np.isfinite(s) & np.isfinite(acc)
      d[ds] = {"spearman": float(stats.spearmanr(s[ok], acc[ok]).statistic),
               "kendall": float(stats.kendalltau(s[ok], acc[ok]).statistic), "n": int(ok.sum())}
    if name in SUITE_ZERO_NAMES:
      sz = table[f"sz_c10_{SUITE_ZERO_NAMES[name]}"][rows]
      ok = np.isfinite(s) & np.isfinite(sz)
      if ok.sum() > 2:
        d["suite_zero_c10_" + SUITE_ZERO_NAMES[name]] = {
            "spearman": float(stats.spearmanr(s[ok], sz[ok]).statistic),
            "kendall": float(stats.kendalltau(s[ok], sz[ok]).statistic), "n": int(ok.sum())}
    out[name] = d
  # Suite-Zero's own values on the same archs vs the same targets (reference line).
  ref = {}
  for name in sorted(set(SUITE_ZERO_NAMES.values())):
    sz = table[f"sz_c10_{name}"][rows]
    d = {}
    for ds in ACC_COLUMNS:
      acc = table[ds][rows]
      ok = np.isfinite(sz) & np.isfinite(acc)
      if ok.sum() > 2:
        d[ds] = {"spearman": float(stats.spearmanr(sz[ok], acc[ok]).statistic), "n": int(ok.sum())}
    ref[name] = d
  return {"ours": out, "suite_zero_same_archs": ref}


def check_search_config(cfg) -> None:
  """Fails early on a bad latency device / dataset, listing the allowed values."""
  from evonas_jax.proxies import benchdata
  dev = cfg.get("latency_device", "")
  if dev:
    benchdata.check_hw_device(dev)
    ds = cfg.get("latency_dataset", "cifar10")
    allowed = (benchdata.HW_ORIGINAL_DATASETS if cfg.get("benchdata_dir")
               else benchdata.HW_SHIPPED_DATASETS)
    if ds not in allowed:
      raise ValueError(f"config.latency_dataset={ds!r}; allowed: {allowed}")


def run_search(cfg, model, params, batch, workdir: str) -> dict:
  """The training-free search of `cfg.search` on the NB201 space (see the module doc)."""
  from evonas_jax.proxies.tf_search import training_free_search
  s = cfg.search
  return training_free_search(
      nbspace.NB201Space(), model, params, batch, proxy=s.proxy, population=s.population,
      generations=s.generations, seed=s.seed, workdir=os.path.join(workdir, "search"),
      latency_device=cfg.get("latency_device", ""),
      latency_dataset=cfg.get("latency_dataset", "cifar10"),
      benchdata_dir=cfg.get("benchdata_dir") or None)


def run(cfg, workdir: str) -> dict:
  check_search_config(cfg)
  workdir = open_workdir(workdir, cfg, allow_existing_finished=True)
  os.makedirs(os.path.join(workdir, "scores"), exist_ok=True)
  table = load_nb201_table(cfg.get("benchdata_dir") or None)
  rows = select_archs(cfg, table)
  strs = table["arch_str"][rows]
  genomes = np.stack([nbspace.str_to_ops(s) for s in strs])
  masks = nbspace.genome_to_masks(genomes)
  net_cfg = nbnet.NB201Config(channels=cfg.net.channels, cells=cfg.net.cells, num_classes=10)
  model = nb201_proxy_model(net_cfg)
  batch = {k: jnp.asarray(v) for k, v in
           cifar10_batch(cfg.data.source, cfg.data.num_images, cfg.data.get("path") or None).items()}
  keys = jax.random.split(jax.random.key(cfg.init_seed), cfg.num_seeds)
  seeds = jax.vmap(lambda k: nbnet.init_nb201(net_cfg, k)[1]["params"])(keys)
  rng = jax.random.key(cfg.init_seed + 1)

  info = {"nb201_indices": rows.tolist(), "net": net_cfg.__dict__, "timing": {}}
  proxy_kwargs = {}
  if "lswag" in cfg.proxies:
    band = cfg.lswag.band
    if band == "auto":
      cal_path = os.path.join(workdir, "scores", "lswag_calibration.json")
      if os.path.exists(cal_path):
        with open(cal_path) as f:
          cal = json.load(f)
      else:
        params0 = jax.tree.map(lambda a: a[0], seeds)
        cal = calibrate_band(cfg, model, params0, batch, table["arch_str"], rows)
        with open(cal_path, "w") as f:
          json.dump(cal, f)
      info["lswag_band_calibration"] = cal
      band = cal["band"]
    proxy_kwargs["lswag"] = {"band": tuple(band), "variance": cfg.lswag.variance,
                             "num_splits": cfg.lswag.num_splits}
    info["lswag_settings"] = {"band": list(band), "variance": cfg.lswag.variance}
  if "fisher" in cfg.proxies and "fisher" in cfg:
    proxy_kwargs["fisher"] = {"weighting": cfg.fisher.weighting}
    info["fisher_settings"] = {"weighting": cfg.fisher.weighting}
  scores = {}

  def write_outputs():
    """Rewritten after every proxy, so a long run leaves usable partial results."""
    with open(os.path.join(workdir, "nb201_scores.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["nb201_index", "arch_str"] + list(scores))
      for i, r in enumerate(rows):
        w.writerow([int(r), strs[i]] + [repr(float(scores[k][i])) for k in scores])
    corr = correlations(scores, table, rows)
    corr["settings"] = info
    corr["paper_anchor_lswag_spearman"] = {"cifar10": 0.79, "cifar100": 0.83,
                                           "ImageNet16-120": 0.80}
    with open(os.path.join(workdir, "nb201_correlations.json"), "w") as f:
      json.dump(corr, f, indent=1)
    return corr

  for name in tqdm(list(cfg.proxies), desc="proxies"):
    path = os.path.join(workdir, "scores", f"{name}.npy")
    tpath = os.path.join(workdir, "scores", f"{name}.timing.json")
    if os.path.exists(path):
      scores[name] = np.load(path)
      if os.path.exists(tpath):
        with open(tpath) as f:
          info["timing"][name] = json.load(f)
      continue
    fn = get_proxy(name)
    kw = proxy_kwargs.get(name, {})
    pf = (lambda f, k: lambda *a: f(*a, **k))(fn, kw)
    t = time.perf_counter()
    s, timing = score_archs(pf, model, seeds, masks, batch, rng, cfg.arch_batch, desc=name)
    timing["total_s"] = time.perf_counter() - t
    info["timing"][name] = timing
    np.save(path, s)
    with open(tpath, "w") as f:
      json.dump(timing, f)
    scores[name] = s
    print(f"{name}: {timing['total_s']:.1f}s", flush=True)
    write_outputs()
  corr = write_outputs()
  if cfg.get("search") and cfg.search.enabled:
    res = run_search(cfg, model, jax.tree.map(lambda a: a[0], seeds), batch, workdir)
    print(f"training-free search: {len(res['genomes'])} cells on the front of "
          f"(-{res['proxy']}, {res['size_name']}) in {workdir}/search", flush=True)
  return corr


def main(argv):
  del argv
  corr = run(flags.FLAGS.config, flags.FLAGS.workdir)
  for name, d in corr["ours"].items():
    print(f"{name:10s} " + " ".join(f"{ds}={d[ds]['spearman']:+.3f}" for ds in ACC_COLUMNS))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "configs/proxies_nb201*.py", lock_config=True)
  flags.DEFINE_string("workdir", None, "output folder")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
