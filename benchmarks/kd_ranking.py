"""Does CA-DDKD improve the supernet's ranking consistency? A ranking benchmark that can resolve τ.

What it measures
  The quickstart supernet (configs/quickstart.py: tiny EvoNAS space, Fashion-MNIST, ViT teacher)
  is trained twice at the same budget: with CA-DDKD as configured ("kd") and without any
  distillation ("nokd": teacher.source="none", distill.kd_ratio=0, alpha_spatial=0,
  alpha_frequency=0). For N subnets stratified over MACs it compares the accuracy each subnet
  inherits from each supernet with the accuracy of the same subnet trained alone from scratch
  (the ground truth), and reports Kendall τ, Spearman ρ and the top-5 overlap for both.

  * Subnets (`select_archs`): `--pool` uniform genomes from `space.sample(seed)`, plus genomes
    drawn by the same sampler with its choices restricted to the bottom / top values of every
    width gene (depth open or closed: uniform draws never come near the smallest or the largest
    subnet, whose MACs are 1.4 M and 10.5 M while 4096 uniform draws span 1.7-7.1 M). MACs are
    the analytic `evonas_jax.nn.cost.arch_cost` (what the trainer reports for classification).
    The MAC range [smallest, largest] is cut in N-2 strata of equal width in log MACs and one
    pooled genome is drawn at random in each (the nearest unused one in log MACs if a stratum is
    empty: "filled_by": "nearest"), plus `space.smallest()` and `space.largest()`. The archs
    are sorted by MACs. Deterministic given --seed.
  * Ground truth (`train_standalone`): every arch's sliced network (`subnet_model` +
    `init_variables`) trained alone from scratch with cross-entropy, AdamW (warmup-cosine, the
    config's lr / weight decay, global-norm clip 1) and the supernet's data config / batch size
    for --standalone_steps, then evaluated on the validation split with its own running BN
    statistics. Seed r (0 or 1) sets both the init key and the data order, the same for every
    arch (common random numbers). --seed_archs archs evenly spaced in the MAC order (smallest
    and largest included) are also trained with seed 1; their mean seed-to-seed std (sample
    std, ddof=1, over the 2 seeds) is the noise floor, and "separable" says whether the spread
    (max - min) of the seed-0 accuracies exceeds 3 of those stds (if not, the ground-truth
    ranking is mostly noise and τ cannot be resolved).
  * Inherited accuracy: `search_lib.load_supernet(workdir)`, then the project's evaluation path
    `supernet_train.evaluate_task` (masked mode) with exact per-subnet BatchNorm statistics over
    the default calibration set (DEFAULT_CALIB_BATCHES batches of DEFAULT_CALIB_BATCH_SIZE
    augmented train images, data seed = config seed + 1, as the trainer and the search use).
  * Metrics vs the seed-0 standalone accuracies: Kendall τ (tau-b), Spearman ρ, top-5 overlap
    = |top-5 by supernet ∩ top-5 by standalone| / 5 (top-min(5, N) in a smoke run).

Command
  python benchmarks/kd_ranking.py                     # full run -> benchmarks/results/kd_ranking.json
      [--subnets 16] [--seed_archs 4] [--standalone_steps 1500] [--steps N] [--teacher_steps N]
      [--seed 0] [--pool 4096] [--workdir DIR] [--out FILE]
  python benchmarks/kd_ranking.py --smoke --subnets 4 --seed_archs 2 --standalone_steps 20 \\
      --steps 20 --teacher_steps 20                   # -> $TMPDIR/kd_ranking_smoke.json
  --steps / --teacher_steps default to the config's (300 / 450). Without --smoke, --subnets must
  be >= 16 and --seed_archs >= 4. A smoke run never writes the committed results unless --out
  says so. 20 supernet steps are enough for the quickstart's 5 PST stages (3-6 steps each).

Resuming
  Everything finished is kept in --workdir (default: $TMPDIR/kd_ranking_<args>, one folder per
  setting): standalone.json (one entry per (genome, seed, steps), written after each training),
  supernet_kd/ and supernet_nokd/ (trainer workdirs; a finished one, with results.json, is
  reused, an unfinished one resumes from its checkpoints) and inherited_{kd,nokd}.json. Rerun
  the same command after a kill to continue.

JSON schema (--out)
  {"archs": [arch.to_dict(), ...],            # sorted by MACs; index i below = archs[i]
   "genomes": [[int, ...], ...], "macs": [int, ...],
   "strata": [{"index", "lo", "hi", "filled_by": "stratum"|"nearest"|"smallest"|"largest"}, ...],
   "supernet_acc_kd": [float, ...], "supernet_acc_nokd": [float, ...],
   "standalone_acc": {"seed0": [float, ...], "seed1": {"<arch index>": float, ...}},
   "standalone_seconds": {"seed0": [float, ...], "seed1": {"<arch index>": float}},
   "kd":   {"tau", "rho", "top5_overlap", "top_k" (5, or N if smaller), "train_wall_s",
            "images_per_s", "teacher_val_acc", "workdir"},
   "nokd": {... same ...},
   "standalone": {"steps", "seed_archs": [arch index, ...], "seed_std": [per seed arch],
                  "mean_seed_std", "spread", "separable"},
   "goal": {"tau_kd >= 0.6": bool, "tau_kd >= tau_nokd": bool},
   "config": {...the settings...}, "device": {...},
   "wall_s": float,                 # total over every (killed and resumed) process of the workdir
   "wall_s_this_process": float}
  (tau / rho are null when undefined, e.g. constant accuracies in a smoke run.)

Run time (an ESTIMATE, not measured: extrapolated from smoke runs on a 2-core CPU shared with
  other jobs, load average ~4.7):
  the full default run (16 archs + 4 second seeds = 20 standalone trainings of 1500 steps, two
  quickstart supernets of 300 steps, the KD one with its 450-step teacher) should take roughly
  3-6 hours on 2 CPU cores: the standalone trainings dominate (~0.3-0.6 s per step averaged
  over the MAC range, the largest arch slower, so ~2.5-5 h, plus ~40-70 s of XLA compile per
  arch that a second seed of the same arch loads from the persistent cache), the two
  supernets ~15-25 min (configs/quickstart.py: ~6 min on a quiet machine) and the 2 x 16
  inherited evaluations ~3-5 min. Smoke reference (the command above, same busy machine):
  ~10 min in all, of which supernets 137 s (KD) / 75 s (no KD), inherited evaluation 60 / 35 s,
  standalone 9-70 s per 20-step training (almost all compile). A killed run resumes.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np
import optax
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from evonas_jax import compile_cache  # noqa: E402
from evonas_jax import data as data_lib  # noqa: E402
from evonas_jax.evaluate import DEFAULT_CALIB_BATCH_SIZE, DEFAULT_CALIB_BATCHES  # noqa: E402
from evonas_jax.nn.cost import arch_cost  # noqa: E402
from evonas_jax.nn.supernet import init_variables, subnet_model  # noqa: E402
from evonas_jax.search_lib import load_supernet  # noqa: E402
from evonas_jax.space import get_space  # noqa: E402
from evonas_jax.supernet_train import evaluate_task, make_bn_step, make_task_eval_step  # noqa: E402
from evonas_jax.tasks import Classification, cross_entropy  # noqa: E402
from evonas_jax.trainer import train_and_evaluate  # noqa: E402

T0 = time.time()


def log(msg: str) -> None:
  print(f"[kd_ranking {time.time() - T0:6.0f} s] {msg}", flush=True)


def load_quickstart():
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py")
  spec = importlib.util.spec_from_file_location("quickstart", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _read_json(path: str, default):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, obj) -> None:
  """Atomic write (a kill mid-write leaves the previous file)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _account_wall(work: str) -> float:
  """Records this process's elapsed time in <work>/wall.json; returns the total over every
  process that worked on this workdir (a resumed run adds to the killed ones)."""
  path = os.path.join(work, "wall.json")
  sessions = _read_json(path, {})
  sessions[f"{T0:.3f}-{os.getpid()}"] = time.time() - T0
  _write_json(path, sessions)
  return float(sum(sessions.values()))


def _gkey(genome) -> str:
  return "".join(str(int(v)) for v in genome)


# ----------------------------------------------------------------------------- subnets
def _restricted_choices(space, kinds_pick: str, n: int, depth: bool) -> dict:
  """space.sample choices opening the bottom / top `n` values of every width gene."""
  out = {"depth": depth}
  for kind, values in (("mlp_ratio", space.mlp_choices), ("d_state", space.d_state_choices),
                       ("expand", space.expand_choices)):
    v = tuple(sorted(values))
    out[kind] = v[:n] if kinds_pick == "bottom" else v[-n:]
  return out


def select_archs(space, image_shape, num_classes: int, n: int, seed: int, pool: int):
  """N archs stratified over log MACs, smallest and largest included, sorted by MACs.

  Returns (archs, genomes (N, G) int32, macs list[int], strata list[dict]).
  """
  def macs_of(arch):
    return int(arch_cost(space, arch, image_shape, num_classes).macs)

  rng = np.random.default_rng(seed)
  parts = [space.sample(int(rng.integers(2**31)), num=pool)]
  width = max(len(space.mlp_choices), len(space.d_state_choices), len(space.expand_choices))
  extra = max(pool // 16, 32)
  for j in range(1, width):          # bottom-j / top-j values of every width gene
    for pick, depth in (("bottom", True), ("top", True), ("top", False)):
      parts.append(space.sample(int(rng.integers(2**31)), num=extra,
                                choices=_restricted_choices(space, pick, j, depth)))
  genomes = np.unique(np.concatenate(parts).astype(np.int32), axis=0)   # sorted: deterministic
  small_g, large_g = space.encode(space.smallest()), space.encode(space.largest())
  keep = [i for i, g in enumerate(genomes)
          if not (np.array_equal(g, small_g) or np.array_equal(g, large_g))]
  genomes = genomes[keep]
  logm = np.log(np.array([macs_of(space.decode(g)) for g in genomes], np.float64))
  lo, hi = macs_of(space.smallest()), macs_of(space.largest())
  edges = np.linspace(math.log(lo), math.log(hi), max(n - 2, 0) + 1)
  chosen, strata, used = [], [], set()
  for s in range(n - 2):
    a, b = edges[s], edges[s + 1]
    inside = np.nonzero((logm >= a) & ((logm < b) if s < n - 3 else (logm <= b)))[0]
    inside = [i for i in inside if i not in used]
    if inside:
      i, how = int(rng.choice(inside)), "stratum"
    else:
      free = [i for i in range(len(genomes)) if i not in used]
      i = min(free, key=lambda k: abs(logm[k] - 0.5 * (a + b)))
      how = "nearest"
    used.add(i)
    chosen.append(genomes[i])
    strata.append({"lo": int(round(math.exp(a))), "hi": int(round(math.exp(b))), "filled_by": how})
  all_g = [small_g] + chosen + [large_g]
  all_s = ([{"lo": lo, "hi": lo, "filled_by": "smallest"}] + strata
           + [{"lo": hi, "hi": hi, "filled_by": "largest"}])
  archs = [space.decode(g) for g in all_g]
  macs = [macs_of(a) for a in archs]
  order = sorted(range(len(archs)), key=lambda k: (macs[k], _gkey(all_g[k])))
  strata_out = [dict(all_s[k], index=r) for r, k in enumerate(order)]
  return ([archs[k] for k in order], np.stack([all_g[k] for k in order]),
          [macs[k] for k in order], strata_out)


# ----------------------------------------------------------------------------- standalone
def train_standalone(space, arch, cfg, steps, seed):
  """Trains `arch` alone (sliced network, from scratch, CE) -> validation accuracy."""
  info = data_lib.dataset_info(cfg.data)
  model = subnet_model(space, arch, info.num_classes)
  variables = init_variables(model.spec, info.num_classes, jax.random.key(seed), info.image_shape)
  sched = optax.warmup_cosine_decay_schedule(0.0, cfg.optimizer.lr, min(50, steps // 5), steps,
                                             end_value=cfg.optimizer.lr * 0.01)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(sched, weight_decay=cfg.optimizer.weight_decay))
  params, bs = variables["params"], variables["batch_stats"]
  opt = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, bs, opt, x, y):
    def loss_fn(p):
      logits, upd = model.apply({"params": p, "batch_stats": bs}, x, train=True,
                                mutable=["batch_stats"])
      return cross_entropy(logits, y), upd["batch_stats"]
    (loss, bs2), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), bs2, opt, loss

  it = data_lib.train_iterator(cfg.data, cfg.batch_size, seed=seed)
  for _ in range(steps):
    b = next(it)
    params, bs, opt, loss = step(params, bs, opt, b["image"], b["label"])
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"standalone training of {arch.short()} diverged (loss {loss})")
  ev = jax.jit(lambda v, x: model.apply(v, x))
  correct = total = 0.0
  for b in data_lib.eval_iterator(cfg.data, "validation", cfg.eval_batch_size):
    pred = np.argmax(np.asarray(ev({"params": params, "batch_stats": bs}, b["image"])), -1)
    correct += float(((pred == b["label"]) * b["mask"]).sum())
    total += float(b["mask"].sum())
  return correct / total


# ----------------------------------------------------------------------------- supernets
def supernet_config(base, kd: bool):
  c = base.copy_and_resolve_references()
  if not kd:
    c.teacher.source = "none"
    c.distill.kd_ratio = 0.0
    c.distill.alpha_spatial = 0.0
    c.distill.alpha_frequency = 0.0
  return c


def train_supernet(c, wd: str) -> dict:
  """Trains (or resumes) the supernet in `wd`; a finished workdir is reused."""
  done = os.path.join(wd, "results.json")
  if os.path.exists(done):
    log(f"reusing the finished supernet in {wd}")
    return _read_json(done, {})
  return train_and_evaluate(c, wd)


def inherited_accuracies(c, wd: str, archs, cache_path: str) -> list[float]:
  """Validation accuracy of every arch inherited from the supernet in `wd` (masked mode, exact
  per-subnet BN statistics over the default calibration set); cached per genome."""
  cache = _read_json(cache_path, {})
  space = get_space(c.space, c.preset)
  keys = [_gkey(space.encode(a)) for a in archs]
  if all(k in cache for k in keys):
    return [float(cache[k]) for k in keys]
  space, model, variables, data_cfg, info, _ = load_supernet(wd)
  task = Classification(num_classes=info.num_classes)
  calib_it = data_lib.train_iterator(c.data, DEFAULT_CALIB_BATCH_SIZE, seed=c.seed + 1)
  calib = [next(calib_it)["image"] for _ in range(DEFAULT_CALIB_BATCHES)]
  batches = list(data_lib.eval_iterator(data_cfg, "validation", c.eval_batch_size))
  step, bn_step = make_task_eval_step(model, task), make_bn_step(model)
  out = []
  for a, key in zip(archs, keys):
    if key not in cache:
      cache[key] = evaluate_task(step, variables, batches, space, a, task, bn_step=bn_step,
                                 calib_batches=calib)["accuracy"]
      _write_json(cache_path, cache)
    out.append(float(cache[key]))
  return out


# ----------------------------------------------------------------------------- metrics
def _finite(x):
  return None if x is None or not np.isfinite(x) else float(x)


def ranking_metrics(pred, truth) -> dict:
  pred, truth = np.asarray(pred, float), np.asarray(truth, float)
  k = min(5, len(pred))
  top_p = set(np.argsort(-pred, kind="stable")[:k].tolist())
  top_t = set(np.argsort(-truth, kind="stable")[:k].tolist())
  return {"tau": _finite(stats.kendalltau(pred, truth)[0]),
          "rho": _finite(stats.spearmanr(pred, truth)[0]),
          "top5_overlap": len(top_p & top_t) / k, "top_k": k}


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--subnets", type=int, default=16, help="archs (>= 16 unless --smoke)")
  ap.add_argument("--seed_archs", type=int, default=4,
                  help="archs also trained standalone with a 2nd seed (>= 4 unless --smoke)")
  ap.add_argument("--standalone_steps", type=int, default=1500)
  ap.add_argument("--steps", type=int, default=None, help="supernet steps (default: config's)")
  ap.add_argument("--teacher_steps", type=int, default=None,
                  help="teacher steps (default: config's)")
  ap.add_argument("--seed", type=int, default=0, help="arch-selection seed")
  ap.add_argument("--pool", type=int, default=4096, help="uniform genomes drawn for the strata")
  ap.add_argument("--workdir", default="", help="resumable state (default: under the temp dir)")
  ap.add_argument("--out", default="", help="JSON (default: benchmarks/results/kd_ranking.json; "
                  "with --smoke: $TMPDIR/kd_ranking_smoke.json)")
  ap.add_argument("--smoke", action="store_true", help="allow tiny settings (a quick check)")
  a = ap.parse_args(argv)
  if not a.smoke and a.subnets < 16:
    ap.error(f"--subnets {a.subnets}: must be >= 16 (or pass --smoke)")
  if not a.smoke and a.seed_archs < 4:
    ap.error(f"--seed_archs {a.seed_archs}: must be >= 4 (or pass --smoke)")
  if a.subnets < 3:
    ap.error(f"--subnets {a.subnets}: must be >= 3")
  if not 2 <= a.seed_archs <= a.subnets:
    ap.error(f"--seed_archs {a.seed_archs}: must be in [2, --subnets]")
  for name in ("standalone_steps", "steps", "teacher_steps", "pool"):
    v = getattr(a, name)
    if v is not None and v < 1:
      ap.error(f"--{name} {v}: must be >= 1")
  if not a.out:
    a.out = (os.path.join(tempfile.gettempdir(), "kd_ranking_smoke.json") if a.smoke else
             os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                          "kd_ranking.json"))
  return a


def main(argv=None):
  a = parse_args(argv)
  base = load_quickstart()
  if a.steps is not None:
    base.num_steps = a.steps
  if a.teacher_steps is not None:
    base.teacher.num_steps = a.teacher_steps
  base.eval_every = min(base.eval_every, base.num_steps)
  base.teacher.eval_every = min(base.teacher.eval_every, base.teacher.num_steps)
  tag = (f"n{a.subnets}_k{a.seed_archs}_sa{a.standalone_steps}_st{base.num_steps}"
         f"_te{base.teacher.num_steps}_seed{a.seed}_pool{a.pool}" + ("_smoke" if a.smoke else ""))
  work = os.path.abspath(a.workdir or os.path.join(tempfile.gettempdir(), f"kd_ranking_{tag}"))
  os.makedirs(work, exist_ok=True)
  log(f"workdir {work} (rerun the same command to resume); out {a.out}")
  compile_cache.enable(base.get("compile_cache_dir", ""))

  space = get_space(base.space, base.preset)
  info = data_lib.dataset_info(base.data)
  archs, genomes, macs, strata = select_archs(space, tuple(info.image_shape), info.num_classes,
                                              a.subnets, a.seed, a.pool)
  sel_path = os.path.join(work, "archs.json")
  saved = _read_json(sel_path, None)
  if saved is not None and saved["genomes"] != genomes.tolist():
    raise SystemExit(f"{sel_path} holds a different arch selection; use another --workdir")
  _write_json(sel_path, {"genomes": genomes.tolist(), "macs": macs, "strata": strata})
  n = len(archs)
  seed_archs = sorted(set(np.round(np.linspace(0, n - 1, a.seed_archs)).astype(int).tolist()))
  log(f"{n} archs, MACs {macs[0] / 1e6:.2f}-{macs[-1] / 1e6:.2f} M; "
      f"{sum(s['filled_by'] == 'nearest' for s in strata)} strata filled by the nearest genome; "
      f"second seed for archs {seed_archs}")

  # ---- supernets (CA-DDKD and no KD), then inherited accuracies
  sup = {}
  for name, kd in (("kd", True), ("nokd", False)):
    c = supernet_config(base, kd)
    wd = os.path.join(work, f"supernet_{name}")
    log(f"supernet {name}: {c.num_steps} steps, teacher {c.teacher.source}"
        + (f" ({c.teacher.num_steps} steps)" if kd else ""))
    res = train_supernet(c, wd)
    acc = inherited_accuracies(c, wd, archs, os.path.join(work, f"inherited_{name}.json"))
    sup[name] = {"acc": acc, "train_wall_s": res.get("wall_seconds"),
                 "images_per_s": res.get("images_per_s_median"),
                 "teacher_val_acc": res.get("teacher_val_acc"), "workdir": wd}
    log(f"supernet {name}: inherited acc {np.round(acc, 4).tolist()}")
    _account_wall(work)

  # ---- standalone ground truth (resumable, one entry per training)
  st_path = os.path.join(work, "standalone.json")
  done = _read_json(st_path, {})
  jobs = [(i, 0) for i in range(n)] + [(i, 1) for i in seed_archs]
  for j, (i, r) in enumerate(jobs):
    key = f"{_gkey(genomes[i])}|seed{r}|steps{a.standalone_steps}"
    if key in done:
      continue
    t = time.time()
    acc = train_standalone(space, archs[i], base, a.standalone_steps, seed=r)
    done[key] = {"acc": acc, "seconds": time.time() - t}
    _write_json(st_path, done)
    _account_wall(work)
    log(f"standalone {j + 1}/{len(jobs)}: arch {i} seed {r} ({macs[i] / 1e6:.2f} M MACs) "
        f"val acc {acc:.4f} in {time.time() - t:.0f} s")

  def entry(i, r):
    return done[f"{_gkey(genomes[i])}|seed{r}|steps{a.standalone_steps}"]

  seed0 = [entry(i, 0)["acc"] for i in range(n)]
  seed1 = {str(i): entry(i, 1)["acc"] for i in seed_archs}
  stds = [float(np.std([seed0[i], seed1[str(i)]], ddof=1)) for i in seed_archs]
  mean_std = float(np.mean(stds))
  spread = float(max(seed0) - min(seed0))

  out = {"archs": [x.to_dict() for x in archs], "genomes": genomes.tolist(), "macs": macs,
         "strata": strata,
         "supernet_acc_kd": sup["kd"]["acc"], "supernet_acc_nokd": sup["nokd"]["acc"],
         "standalone_acc": {"seed0": seed0, "seed1": seed1},
         "standalone_seconds": {"seed0": [entry(i, 0)["seconds"] for i in range(n)],
                                "seed1": {str(i): entry(i, 1)["seconds"] for i in seed_archs}}}
  for name in ("kd", "nokd"):
    out[name] = {**ranking_metrics(sup[name]["acc"], seed0),
                 **{k: v for k, v in sup[name].items() if k != "acc"}}
  out["standalone"] = {"steps": a.standalone_steps, "seed_archs": seed_archs, "seed_std": stds,
                       "mean_seed_std": mean_std, "spread": spread,
                       "separable": bool(spread > 3 * mean_std)}
  tk, tn = out["kd"]["tau"], out["nokd"]["tau"]
  out["goal"] = {"tau_kd >= 0.6": bool(tk is not None and tk >= 0.6),
                 "tau_kd >= tau_nokd": bool(tk is not None and tn is not None and tk >= tn)}
  out["config"] = {"config": "configs/quickstart.py", "supernet_steps": base.num_steps,
                   "teacher_steps": base.teacher.num_steps, "pst_stages": list(base.pst.stages),
                   "pst_k_max": base.pst.k_max, "batch_size": base.batch_size,
                   "standalone_steps": a.standalone_steps, "subnets": n,
                   "seed_archs": a.seed_archs, "seed": a.seed, "pool": a.pool, "smoke": a.smoke,
                   "dataset": info.name, "fallback_used": info.fallback_used,
                   "split": "validation",
                   "calibration": f"{DEFAULT_CALIB_BATCHES} x {DEFAULT_CALIB_BATCH_SIZE} train "
                                  "images (exact per-subnet BN statistics)",
                   "workdir": work}
  d0 = jax.devices()[0]
  out["device"] = {"platform": d0.platform, "kind": getattr(d0, "device_kind", ""),
                   "count": jax.device_count(), "cpu_count": os.cpu_count(),
                   "machine": platform.machine(), "jax": jax.__version__}
  out["wall_s"] = _account_wall(work)      # every process on this workdir (resumes included)
  out["wall_s_this_process"] = time.time() - T0
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=2)

  print(f"\n  #  |  MACs (M) | standalone s0 | s1     | KD inh. | no-KD inh.")
  for i in range(n):
    s1 = f"{seed1[str(i)]:.4f}" if str(i) in seed1 else "  -   "
    print(f" {i:3d} | {macs[i] / 1e6:8.2f}  | {seed0[i]:.4f}        | {s1} | "
          f"{sup['kd']['acc'][i]:.4f}  | {sup['nokd']['acc'][i]:.4f}")

  def f(x):
    return "  n/a" if x is None else f"{x:+.3f}"
  for name in ("kd", "nokd"):
    m = out[name]
    print(f" {name:<5}: tau {f(m['tau'])}  rho {f(m['rho'])}  top{m['top_k']} overlap "
          f"{m['top5_overlap']:.2f}  teacher acc {m['teacher_val_acc']}  "
          f"{m['images_per_s'] or 0:.0f} img/s")
  print(f" standalone: spread {spread:.4f}, mean seed std {mean_std:.4f}, separable "
        f"{out['standalone']['separable']}; goal {out['goal']}")
  print(f" wall {out['wall_s']:.0f} s in all ({out['wall_s_this_process']:.0f} s this process) "
        f"-> {a.out}")
  return out


if __name__ == "__main__":
  main()
