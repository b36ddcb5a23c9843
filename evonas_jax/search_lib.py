"""Multi-objective architecture search: objectives, the NSGA-II loop, resumable state, outputs.

    run_search(config, workdir) -> results dict

Objectives (all minimised; `config.objectives`, a comma list from OBJECTIVES):
  error    1 - validation accuracy of the masked supernet after per-subnet BN recalibration,
           computed by the DMMPE engine (or the data-parallel baseline) on the validation split;
  latency  ms of the standalone subnet: the lookup table's prediction (`config.latency = "lut"`,
           the table is built once and cached in the workdir) or a measurement ("measured");
  macs     analytic MACs (`nn.cost.arch_cost`); params  analytic parameter count.
Constraints (`config.constraints.max_latency_ms / max_macs / max_params`, 0 = off) become NSGA-II
violations: the sum of relative excesses over the budgets.

Every generation the search state (NSGA-II state, rng, archive of every evaluated arch with its
objectives, the DMMPE accuracy cache, the generation) is saved with an orbax CheckpointManager;
rerunning the same command resumes from the last generation, and the same seed gives the same
front. Outputs: pareto.json, pareto.csv, pareto.png (pairwise panels of the objectives),
hypervolume.png, metrics.jsonl and tensorboard/search/ (per generation: hypervolume, front size,
cache hits and XLA compiles), results.json (marks the search finished; `open_workdir` then
refuses to overwrite it). pareto.json and results.json carry `provenance` (package versions,
git commit, devices).
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax import dmmpe, latency as latency_lib
from evonas_jax.nn import init_supernet
from evonas_jax.nn.cost import arch_cost
from evonas_jax.provenance import provenance
from evonas_jax.space import get_space
from evonas_jax.workdir import MetricWriter, open_workdir, write_json_atomic

log = logging.getLogger(__name__)

OBJECTIVES = ("error", "latency", "macs", "params")
LATENCY_MODES = ("lut", "measured", "none")   # none: no latency (objectives without "latency")
CONSTRAINTS = {"max_latency_ms": "latency_ms", "max_macs": "macs", "max_params": "params"}
SPACE_OVERRIDES = ("max_depths", "mlp_choices", "d_state_choices", "expand_choices")
_UNITS = {"error": "error", "latency": "latency_ms", "macs": "macs", "params": "params"}


# --------------------------------------------------------------------------- config checks
def parse_objectives(value) -> tuple[str, ...]:
  names = tuple(s.strip() for s in (value.split(",") if isinstance(value, str) else value) if s.strip())
  bad = [n for n in names if n not in OBJECTIVES]
  if bad or not names:
    raise ValueError(f"config.objectives={value!r}: unknown {bad or 'empty list'}; allowed values "
                     f"(comma separated): {OBJECTIVES}")
  if len(set(names)) != len(names):
    raise ValueError(f"config.objectives={value!r} repeats an objective")
  return names


def validate_config(cfg) -> None:
  """Fails early, naming the field and the allowed values."""
  parse_objectives(cfg.objectives)
  if not isinstance(cfg.get("tensorboard", True), bool):
    raise ValueError(f"config.tensorboard={cfg.get('tensorboard')!r} must be True or False "
                     "(TensorBoard scalars in <workdir>/tensorboard/search)")
  if cfg.latency not in LATENCY_MODES:
    raise ValueError(f"config.latency={cfg.latency!r} is not one of {LATENCY_MODES}")
  if cfg.latency == "none" and "latency" in parse_objectives(cfg.objectives):
    raise ValueError("config.latency='none' but config.objectives includes 'latency'; allowed: "
                     "latency='lut' or 'measured', or drop 'latency' from the objectives")
  latency_lib.check_backend(cfg.get("latency_backend", "xla"), "config.latency_backend")
  if not isinstance(cfg.get("latency_table", ""), str):
    raise ValueError(f"config.latency_table={cfg.get('latency_table')!r} must be a path to a "
                     "table JSON built on the target device, or '' (build one here)")
  if cfg.get("latency_table", "") and not os.path.isfile(cfg.latency_table):
    raise ValueError(f"config.latency_table={cfg.latency_table!r} does not exist (a table JSON "
                     "written by build_device_table.py, or '' to build one here)")
  if cfg.evaluator.kind not in dmmpe.EVALUATORS:
    raise ValueError(f"config.evaluator.kind={cfg.evaluator.kind!r} is not one of {dmmpe.EVALUATORS}")
  if not isinstance(cfg.get("compile_cache_dir", ""), str):
    raise ValueError(f"config.compile_cache_dir={cfg.get('compile_cache_dir')!r} must be a "
                     "directory path, '' (the per-user default cache) or 'none'")
  if cfg.evaluator.get("layout", "pool") not in dmmpe.DMMPE_LAYOUTS:
    raise ValueError(f"config.evaluator.layout={cfg.evaluator.layout!r} is not one of "
                     f"{dmmpe.DMMPE_LAYOUTS}")
  if not isinstance(cfg.evaluator.get("depth_flip_tta", True), bool):
    raise ValueError(f"config.evaluator.depth_flip_tta={cfg.evaluator.get('depth_flip_tta')!r} "
                     "must be True or False (flip test-time augmentation of the depth fitness)")
  if cfg.evaluator.split not in dmmpe.ALLOWED_SPLITS:
    raise ValueError(f"config.evaluator.split={cfg.evaluator.split!r} is not one of "
                     f"{dmmpe.ALLOWED_SPLITS} (never the test split)")
  for name in ("population_size", "num_generations"):
    v = cfg[name]
    if not isinstance(v, int) or v < (2 if name == "population_size" else 1):
      raise ValueError(f"config.{name}={v!r} must be an int >= {2 if name == 'population_size' else 1}")
  if cfg.supernet_workdir and any(v for v in cfg.get("space_overrides", {}).values()):
    raise ValueError("config.space_overrides only applies without config.supernet_workdir (a "
                     "trained supernet fixes its space); leave every override empty")
  for name in cfg.constraints:
    if name not in CONSTRAINTS:
      raise ValueError(f"config.constraints.{name} is unknown; allowed: {tuple(CONSTRAINTS)}")
    v = cfg.constraints[name]
    # NaN < 0 is False: without the finite check a NaN budget passed and disabled nothing.
    try:   # math, not np.isfinite: that raises TypeError for ints beyond int64
      finite = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:   # an int too large for a float
      finite = False
    if not finite or v < 0:
      raise ValueError(f"config.constraints.{name}={v!r} must be a finite number >= 0 (0 = off)")
  _validate_search_fields(cfg)


def _validate_search_fields(cfg) -> None:
  """The rest of a search config, checked before the workdir is opened: seeds, counts,
  probabilities, the space (and its overrides), the supernet workdir and the data."""
  from evonas_jax import train_config as tc

  def need(cond, field, allowed):
    if not cond:
      v = cfg
      for part in field.split("."):
        v = v[part]
      raise ValueError(f"config.{field}={v!r} is not allowed: {allowed}")

  def int_in(field, lo, hi=tc.INT_MAX):
    v = cfg
    for part in field.split("."):
      v = v.get(part) if hasattr(v, "get") else None
    if v is None:
      return   # a config written before the field existed: its default applies
    need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, field,
         f"an int in {lo}..{hi}")

  int_in("seed", 0)
  for f in ("evaluator.num_eval_batches", "evaluator.eval_batch_size", "evaluator.calib_batch_size",
            "evaluator.devices_per_group", "evaluator.group_size", "latency_measure.batch",
            "latency_measure.runs", "latency_measure.table_runs", "latency_measure.threads"):
    int_in(f, 1)
  for f in ("evaluator.calib_batches", "evaluator.num_devices", "latency_measure.warmup",
            "latency_measure.table_warmup", "latency_validation_archs", "measure_pareto_max"):
    int_in(f, 0)
  for f in ("population_size", "num_generations"):
    int_in(f, 2 if f == "population_size" else 1)
  for f in ("nsga2.crossover_prob", "nsga2.mutation_prob"):
    v = cfg.nsga2[f.split(".")[1]]
    need(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
         and 0 <= v <= 1, f, "a probability in [0, 1]")
  need(isinstance(cfg.get("measure_pareto_latency", True), bool), "measure_pareto_latency",
       "True or False")
  sup = cfg.supernet_workdir
  need(isinstance(sup, str), "supernet_workdir", "'' or a finished train workdir")
  if sup:
    p = os.path.abspath(os.path.expanduser(sup))
    if not (os.path.isfile(os.path.join(p, "config.json")) and os.path.isdir(os.path.join(p, "final"))):
      raise ValueError(f"config.supernet_workdir={sup!r} is not a finished `evonas_jax.train` "
                       "workdir (it needs config.json and final/); '' searches a random supernet")
    return   # the trained supernet fixes the space and the data
  need(cfg.space in tc.SPACES, "space", f"one of {tc.SPACES}")
  need(cfg.preset in tc.PRESETS, "preset", f"one of {tc.PRESETS}")
  over = cfg.get("space_overrides", {})
  for name in over:
    if name not in SPACE_OVERRIDES:
      raise ValueError(f"config.space_overrides.{name} is unknown; allowed: {SPACE_OVERRIDES}")
  rules = {"max_depths": (int, 1, 64), "d_state_choices": (int, 1, 4096),
           "mlp_choices": (float, 0, None), "expand_choices": (float, 0, None)}
  for name, (kind, lo, hi) in rules.items():
    vals = over.get(name, ())
    field = f"space_overrides.{name}"
    need(isinstance(vals, (tuple, list)), field, "() or a tuple of values")
    for x in vals:
      if kind is int:
        ok = isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi
      else:
        ok = isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) and x > lo
      need(ok, field, f"() or a tuple of {'ints in %d..%d' % (lo, hi) if kind is int else 'finite numbers > 0'}")
  md = tuple(over.get("max_depths", ()))
  base = get_space(cfg.space, cfg.preset)
  need(not md or len(md) == base.num_stages, "space_overrides.max_depths",
       f"() or {base.num_stages} block counts (one per stage)")
  if any(over.get(k) for k in SPACE_OVERRIDES):
    import dataclasses
    try:
      dataclasses.replace(base, **{k: tuple(v) for k, v in over.items() if v})
    except ValueError as e:   # e.g. an expand that gives a non-integer d_inner
      given = [f"space_overrides.{k}" for k in SPACE_OVERRIDES if over.get(k)]
      raise ValueError(f"config.{' / '.join(given) or 'space_overrides'}: {e}") from None
  tc.validate_data_config(cfg.data)


def _devices(num: int):
  devs = jax.devices()
  if num < 0 or num > len(devs):
    raise ValueError(f"config.evaluator.num_devices={num}: allowed 0 (all) to {len(devs)}")
  return devs[:num] if num else devs


def with_depth_flip_tta(rt, cfg):
  """rt with its depth task's flip TTA set from config.evaluator.depth_flip_tta (default True:
  the official depth fitness is AbsRel after flip-TTA post-processing); other tasks unchanged."""
  if rt is None or rt.name != "depth":
    return rt
  import dataclasses
  on = cfg.evaluator.get("depth_flip_tta", True)
  return dataclasses.replace(rt, task=dataclasses.replace(rt.task, flip_tta=on))


# --------------------------------------------------------------------------- supernet
def load_supernet(train_workdir: str):
  """A trained supernet workdir -> (space, model, variables, data_cfg, info, rt).

  Reads config.json (task, space, preset, data) and restores final/ (orbax StandardCheckpointer)
  onto freshly initialised variables as the abstract target. rt: the run's
  `task_runtime.TaskRuntime` (classification, depth or segmentation).
  """
  import orbax.checkpoint as ocp
  from evonas_jax import data as data_lib
  train_workdir = os.path.abspath(os.path.expanduser(train_workdir))
  cfg_path, ckpt = os.path.join(train_workdir, "config.json"), os.path.join(train_workdir, "final")
  for p in (cfg_path, ckpt):
    if not os.path.exists(p):
      raise FileNotFoundError(f"config.supernet_workdir={train_workdir}: {p} is missing (is the "
                              "training finished?)")
  with open(cfg_path) as f:
    tcfg = json.load(f)
  space = get_space(tcfg["space"], tcfg["preset"])
  task = tcfg.get("task", "classification")
  if task == "classification":
    data_cfg = data_lib.get_config_defaults()
    data_cfg.update(tcfg["data"])
    info = data_lib.dataset_info(data_cfg)
    # No stochastic depth: the fitness's BatchNorm calibration runs train-mode forwards, which
    # must see the deterministic subnet that is evaluated (and exported).
    model, variables = init_supernet(space, info.num_classes, jax.random.key(0), info.image_shape,
                                     drop_path_rate=0.0)
    rt = None
  else:
    from evonas_jax.task_runtime import runtime_from_train_config
    rt, data_cfg = runtime_from_train_config(tcfg)
    info = rt.info
    model = rt.student(space)
    variables = jax.eval_shape(lambda: rt.init_student(space, jax.random.key(0)))
  variables = ocp.StandardCheckpointer().restore(ckpt, jax.tree.map(
      lambda a: np.zeros(a.shape, a.dtype), variables))
  return space, model, variables, data_cfg, info, rt


def random_supernet(cfg):
  """A randomly initialised supernet for `cfg.space/preset/data` (tests, benchmarks)."""
  from evonas_jax import data as data_lib
  log.warning("config.supernet_workdir is empty: searching a RANDOMLY INITIALISED supernet. "
              "Accuracies are meaningless; use this for tests and benchmarks only.")
  print("[evonas_jax] WARNING: no supernet_workdir given; using a RANDOM supernet "
        "(accuracies are meaningless).", flush=True)
  space = get_space(cfg.space, cfg.preset)
  overrides = {k: tuple(v) for k, v in cfg.get("space_overrides", {}).items() if v}
  if overrides:
    import dataclasses
    bad = sorted(set(overrides) - set(SPACE_OVERRIDES))
    if bad:
      raise ValueError(f"config.space_overrides.{bad[0]} is unknown; allowed: {SPACE_OVERRIDES}")
    space = dataclasses.replace(space, **overrides)
  info = data_lib.dataset_info(cfg.data)
  model, variables = _init_random(space, info.num_classes, tuple(info.image_shape), cfg.seed)
  return space, model, variables, cfg.data, info, None


@functools.lru_cache(maxsize=2)
def _init_random(space, num_classes: int, image_shape: tuple, seed: int):
  # Memoised: a resumed search in the same process (tests) does not re-init (and re-compile).
  return init_supernet(space, num_classes, jax.random.key(seed), image_shape)


# --------------------------------------------------------------------------- objectives
class Objectives:
  """genomes (N, G) -> fitness (N, M) float32, violation (N,) float32, records (list of dict).

  Records carry every raw objective (accuracy, error, latency_ms, macs, params), whatever
  subset is optimised; they are memoised per genome (the archive).
  """

  def __init__(self, cfg, space, evaluator, info, table=None, variables=None, rt=None,
               decoder=None):
    self.cfg, self.space, self.evaluator, self.info = cfg, space, evaluator, info
    self.names = parse_objectives(cfg.objectives)
    self.table, self.variables = table, variables
    self.records: dict[bytes, dict] = {}   # genome bytes -> record (the archive)
    # Dense tasks: the evaluator scores the task metric; the decoder (arch-independent) adds
    # its measured latency and its MACs/params to every backbone (research: the whole task model).
    self.rt = rt if rt is not None and rt.dense else None
    self.decoder = decoder
    self.score_key = score_key(self.rt)

  def error(self, score: float) -> float:
    """Lower-is-better error from the evaluator's score: 1 - accuracy, AbsRel, 1 - mIoU."""
    return float(score) if self.score_key == "abs_rel" else 1.0 - float(score)

  def measure_ms(self, arch) -> float:
    """Measured latency of the standalone (sliced) task model of `arch` on this device."""
    t = self.cfg.latency_measure
    if self.rt is not None:
      return measure_dense_latency(self.rt, self.space, arch, self.variables, batch=t.batch,
                                   warmup=t.warmup, runs=t.runs)
    return latency_lib.measure_latency(self.space, arch, self.info.num_classes,
                                       self.info.image_shape, batch=t.batch, warmup=t.warmup,
                                       runs=t.runs, variables=self.variables,
                                       backend=self.cfg.get("latency_backend", "xla"),
                                       threads=t.get("threads", 1))

  def latency_ms(self, arch) -> float:
    if self.cfg.latency == "none":
      return float("nan")
    if self.cfg.latency == "lut":
      ms = self.table.predict(arch)
      if self.rt is not None:   # backbone table + the decoder instead of the classifier head
        ms += self.decoder["latency_ms"] - self.table.entries["head"]
      return ms
    return self.measure_ms(arch)

  def cost(self, arch) -> tuple[int, int]:
    """(MACs, params) of the standalone task model of `arch`."""
    if self.rt is None:
      c = arch_cost(self.space, arch, self.info.image_shape, self.info.num_classes)
      return int(c.macs), int(c.params)
    # Analytic backbone without the classifier (num_classes 0 leaves the final norm's 2*C
    # params, absent from a dense backbone) + the decoder's XLA-counted MACs / exact params.
    c = arch_cost(self.space, arch, self.info.image_shape, 0)
    return (int(c.macs) + int(self.decoder["macs"]),
            int(c.params) - 2 * self.space.dims[-1] + int(self.decoder["params"]))

  def __call__(self, genomes, generation: int, progress=None):
    genomes = np.asarray(genomes, np.int32)
    acc = self.evaluator.evaluate(genomes, progress=progress)
    for g, a in zip(genomes, acc):
      k = g.tobytes()
      if k in self.records:
        continue
      arch = self.space.decode(g)
      macs, params = self.cost(arch)
      self.records[k] = {"genome": g.tolist(), "generation": int(generation),
                         self.score_key: float(a), "error": self.error(a),
                         "latency_ms": self.latency_ms(arch), "macs": macs, "params": params}
    recs = [self.records[g.tobytes()] for g in genomes]
    fitness = np.array([[r[_UNITS[n]] for n in self.names] for r in recs], np.float32)
    return fitness, self.violation(recs), recs

  def violation(self, recs) -> np.ndarray:
    v = np.zeros(len(recs), np.float32)
    for name, field in CONSTRAINTS.items():
      budget = float(self.cfg.constraints.get(name, 0) or 0)
      if budget > 0:
        v += np.array([max(0.0, r[field] / budget - 1.0) for r in recs], np.float32)
    return v


def _read_table(path: str) -> "latency_lib.LatencyTable":
  """LatencyTable.load with a message naming the file for an unreadable / malformed JSON."""
  import json
  where = f"config.latency_table={path!r}"
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{where}: no such file" + (" (it is a directory)"
                                                         if os.path.isdir(path) else ""))
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{where} is not readable JSON ({type(e).__name__}: {e})") from None
  if not (isinstance(d, dict) and isinstance(d.get("meta"), dict)
          and isinstance(d.get("entries"), dict)):
    raise ValueError(f"{where}: expected a JSON object with 'meta' and 'entries' objects "
                     "(a table written by evonas_jax.tools.build_device_table)")
  return latency_lib.LatencyTable(d["entries"], d["meta"])


def _check_table_entries(table, space, path: str) -> None:
  """ValueError naming the first missing / non-finite / negative entry, or a bad meta field,
  of a latency table for `space` (every op any arch of the space can use must be timed)."""
  import math
  where = f"config.latency_table={path!r}"

  def ms(v, key):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
      raise ValueError(f"{where}: entry {key} = {v!r} is not a latency (a finite number of "
                       "ms >= 0)")

  backend = table.meta.get("backend", "xla")
  if backend not in latency_lib.BACKENDS:
    raise ValueError(f"{where}: meta.backend = {backend!r}; allowed {latency_lib.BACKENDS}")
  batch = table.meta.get("batch")
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    raise ValueError(f"{where}: meta.batch = {batch!r} is not a batch size (an int >= 1)")
  e = table.entries
  need = ["stem", "head"] + [f"downsample{s}" for s in range(1, space.num_stages)]
  for key in need:
    if key not in e:
      raise ValueError(f"{where}: no entry {key!r}")
    ms(e[key], key)
  if "dispatch_overhead" in e:
    ms(e["dispatch_overhead"], "dispatch_overhead")
  for s, c in enumerate(space.dims):
    st = e.get(f"stage{s}")
    if not (isinstance(st, dict) and isinstance(st.get("mixer"), dict)
            and isinstance(st.get("mlp"), dict)):
      raise ValueError(f"{where}: entry stage{s} must be an object with 'mixer' and 'mlp' "
                       "objects")
    for key, *_ in latency_lib._mixer_keys(space, s):
      if key not in st["mixer"]:
        raise ValueError(f"{where}: no entry stage{s}/mixer/{key} (stage {s + 1})")
      ms(st["mixer"][key], f"stage{s}/mixer/{key}")
    for r in space.mlp_choices:
      key = str(int(c * r))
      if key not in st["mlp"]:
        raise ValueError(f"{where}: no entry stage{s}/mlp/{key} (stage {s + 1}, mlp_ratio {r})")
      ms(st["mlp"][key], f"stage{s}/mlp/{key}")


def load_device_table(path: str, space, num_classes: int, image_shape,
                      backend: str = "xla", *, complete: bool = False
                      ) -> "latency_lib.LatencyTable":
  """The table JSON at `path` (built on a target device), refused (ValueError naming the
  differing fields) when built for another space/preset/dims/max_depths/num_classes/
  image_shape; a WARNING is printed when it was measured on another device than this one.
  complete: also refuse a table missing an op of the space, or with a non-finite /
  negative entry (what run_search needs; a partial table is fine for inspection)."""
  table = _read_table(path)
  try:
    table.check_compatible(space, num_classes, image_shape)
  except ValueError as e:
    raise ValueError(f"config.latency_table={path!r}: {e}") from None
  if complete:   # what a search needs: every op of the space timed, finite, meta.batch an int
    _check_table_entries(table, space, path)
  here = latency_lib.current_device(table.backend)
  there = table.meta.get("device")
  if there != here:
    print(f"[evonas_jax] WARNING: config.latency_table={path!r} was measured on {there!r} "
          f"({table.backend}, {table.meta.get('threads', '?')} thread(s)), not on this machine "
          f"({here!r}): the lookup-table latencies are those of that device. Latencies measured "
          f"here (config.latency='measured', the Pareto and validation measurements, backend "
          f"{backend!r}) are of this machine.", flush=True)
  elif table.backend != backend:
    print(f"[evonas_jax] note: config.latency_table was timed with {table.backend!r}; "
          f"measured latencies use config.latency_backend={backend!r}", flush=True)
  return table


def score_key(rt) -> str:
  """Record key of the evaluator's score: "accuracy", or a dense task's "abs_rel" / "miou"."""
  return "accuracy" if rt is None or not rt.dense else rt.metric


def measure_dense_latency(rt, space, arch, variables, *, batch=1, warmup=30, runs=50) -> float:
  """Median latency (ms) of the sliced DenseEvoNet (backbone + decoder) of `arch`."""
  from evonas_jax.nn.dense import extract_dense_subnet
  from evonas_jax.nn.supernet import subnet_spec
  sub = rt.student(space, spec=subnet_spec(space, arch))
  x = jnp.zeros((batch, *rt.info.image_shape), jnp.float32)
  return latency_lib._time_fn(latency_lib._jit(sub), (extract_dense_subnet(variables, space, arch), x),
                              warmup, runs)


def decoder_profile(rt, space, model, variables, *, batch=1, warmup=10, runs=30) -> dict:
  """{"latency_ms", "macs", "params"} of the dense model's outnorms + decoder alone (the same for
  every arch: stage widths are not searched)."""
  from evonas_jax.nn.dense import DenseEvoNet, decoder_cost
  image_shape = tuple(rt.info.image_shape)
  cost = decoder_cost(model, variables, image_shape)
  x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  feats = jax.eval_shape(lambda v, x: model.apply(v, x, method=DenseEvoNet.features), variables, x)
  feats = [jnp.zeros(f.shape, f.dtype) for f in feats]

  @jax.jit
  def run(v, fs):
    fs = [model.apply(v, f, method=lambda m, f, s=s: getattr(m, f"outnorm{s}")(f))
          for s, f in enumerate(fs)]
    return model.apply(v, fs, image_shape[:2], method=DenseEvoNet.decode)
  ms = latency_lib._time_fn(run, (variables, feats), warmup, runs)
  return {"latency_ms": ms, "macs": int(cost["macs"]), "params": int(cost["params"])}


# --------------------------------------------------------------------------- checkpointing
def _manager(workdir: str):
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(
      os.path.join(workdir, "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))


def save_state(mngr, generation: int, state, key, objectives: Objectives, evaluator,
               scale: np.ndarray) -> None:
  import orbax.checkpoint as ocp
  tree = {"nsga2": jax.device_get(state), "rng": np.asarray(jax.random.key_data(key))}
  meta = {"generation": generation,
          # The hypervolume scale: with latency="measured" it is a timing, which a resumed run
          # must not re-measure (its hypervolumes would not continue the uninterrupted run's).
          "hv_scale": [float(x) for x in scale],
          "archive": list(objectives.records.values()),
          "cache": {k.hex(): v for k, v in evaluator.cache.items()},
          "evaluator_stats": dict(evaluator.stats)}
  mngr.save(generation, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                meta=ocp.args.JsonSave(meta)))
  mngr.wait_until_finished()


def restore_state(mngr, abstract_state, key):
  import orbax.checkpoint as ocp
  step = mngr.latest_step()
  target = {"nsga2": abstract_state, "rng": np.asarray(jax.random.key_data(key))}
  r = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                 meta=ocp.args.JsonRestore()))
  st = r["state"]
  return step, st["nsga2"], jax.random.wrap_key_data(jnp.asarray(st["rng"])), r["meta"]


# --------------------------------------------------------------------------- the search
def _hypervolume(fitness: np.ndarray, scale: np.ndarray) -> float:
  from evonas_jax.evolve import hypervolume
  f = fitness / scale
  ref = np.full(f.shape[1], 1.1)
  if f.shape[1] > 4:
    return float("nan")
  return float(hypervolume(f, ref))


def run_search(config, workdir: str, *, max_generations_this_run: int | None = None) -> dict | None:
  """Runs (or resumes) the search of `config` in `workdir`.

  max_generations_this_run: stop after this many new generations without finishing (for
  time-sliced jobs and the resume test); rerun the same command to continue. Returns the results
  dict when the search finished, else None.
  """
  from tqdm.auto import tqdm
  from evonas_jax.evolve import NSGA2, GenomeSpec
  validate_config(config)
  workdir = open_workdir(workdir, config)
  writer = MetricWriter(workdir, tensorboard=config.get("tensorboard", True), run="search",
                        group="search")
  t_start = time.time()
  from evonas_jax import compile_cache
  from evonas_jax.compile_cache import CompileStats
  # The persistent compilation cache, as training uses it: a search run after its training run
  # (or a resumed search) loads the executables compiled before.
  cache_dir = compile_cache.enable(config.get("compile_cache_dir", ""))
  if cache_dir and jax.process_index() == 0:
    print(f"[evonas_jax] persistent compilation cache: {cache_dir}", flush=True)
  compile_stats = CompileStats()

  if config.supernet_workdir:
    space, model, variables, data_cfg, info, rt = load_supernet(config.supernet_workdir)
  else:
    space, model, variables, data_cfg, info, rt = random_supernet(config)
  rt = with_depth_flip_tta(rt, config)
  names = parse_objectives(config.objectives)
  print(f"[evonas_jax] search: {space.name}/{space.preset}, data {info.name}, objectives "
        f"{names}, pop {config.population_size} x {config.num_generations} gens", flush=True)

  ev_cfg = config.evaluator
  ckpt = _manager(workdir)
  mngr_has = ckpt.latest_step() is not None
  evaluator = dmmpe.make_evaluator(
      ev_cfg.kind, model, variables, space, data_cfg, split=ev_cfg.split,
      num_eval_batches=ev_cfg.num_eval_batches, eval_batch_size=ev_cfg.eval_batch_size,
      calib_batches=ev_cfg.calib_batches, calib_batch_size=ev_cfg.calib_batch_size,
      calib_seed=config.seed, devices_per_group=ev_cfg.devices_per_group,
      group_size=ev_cfg.group_size, devices=_devices(ev_cfg.get("num_devices", 0)), rt=rt,
      layout=ev_cfg.get("layout", "pool"))
  # Compile the evaluator while the latency table is built: both are mostly single-threaded XLA
  # compiles, so on a 2-core machine they overlap.
  import threading
  warm = threading.Thread(target=evaluator.warmup, daemon=True)
  warm.start()
  # Latency table: built once per workdir (per-op compiles are slow on CPU), then loaded.
  table = None
  lut_path = os.path.join(workdir, "latency_table.json")
  tm = config.latency_measure
  # The table's classifier-head entry needs >= 1 class (a depth model has none; its head entry
  # is replaced by the measured decoder).
  tbl_classes = max(int(info.num_classes), 1)
  backend = config.get("latency_backend", "xla")
  if backend == "onnxruntime" and rt is not None and rt.dense:
    raise ValueError(f"config.latency_backend='onnxruntime' supports classification subnets "
                     f"only (the {rt.name} decoder's latency is measured with XLA only: neither its "
                     f"table entry nor the sliced dense model is timed in onnxruntime yet); "
                     f"allowed here: 'xla'")
  if config.latency == "lut" or config.latency_validation_archs:
    if config.get("latency_table", ""):
      table = load_device_table(config.latency_table, space, tbl_classes, info.image_shape,
                                backend, complete=True)
    elif os.path.exists(lut_path):
      table = latency_lib.LatencyTable.load(lut_path)
      table.check_compatible(space, tbl_classes, info.image_shape)
      if table.backend != backend:
        raise ValueError(f"{lut_path} was built with backend {table.backend!r} but "
                         f"config.latency_backend={backend!r}: resume with the same backend, or "
                         "use a new workdir")
    else:
      table = latency_lib.LatencyTable.build(space, tbl_classes, info.image_shape,
                                             batch=tm.batch, warmup=tm.table_warmup,
                                             runs=tm.table_runs, before_timing=warm.join,
                                             backend=backend, threads=tm.get("threads", 1))
      table.save(lut_path)
  warm.join()
  decoder = None
  if rt is not None and rt.dense:
    decoder = decoder_profile(rt, space, model, variables, batch=tm.batch,
                              warmup=tm.table_warmup, runs=tm.table_runs)
    print(f"[evonas_jax] {rt.name} decoder: {decoder['latency_ms']:.3f} ms, "
          f"{decoder['macs'] / 1e6:.2f} M MACs, {decoder['params'] / 1e6:.3f} M params "
          f"(added to every subnet)", flush=True)
  objectives = Objectives(config, space, evaluator, info, table, variables, rt=rt,
                          decoder=decoder)
  strategy = NSGA2(population_size=config.population_size, genome=GenomeSpec.from_space(space),
                   num_objectives=len(names))
  params = strategy.default_params.replace(crossover_prob=config.nsga2.crossover_prob,
                                           mutation_prob=config.nsga2.mutation_prob)

  def hv_scale():
    # Hypervolume normalisation: error in [0, 1]; costs relative to the largest arch's.
    largest = space.largest()
    macs_big, params_big = objectives.cost(largest)
    big_vals = {"error": 1.0,
                "latency": objectives.latency_ms(largest) if "latency" in names else 1.0,
                "macs": float(macs_big), "params": float(params_big)}
    return np.array([big_vals[n] for n in names], np.float32)

  key = jax.random.key(config.seed)
  pop_bar_kw = dict(unit="arch", dynamic_ncols=True, mininterval=1.0, leave=False)
  if mngr_has:
    n, m = config.population_size, len(names)
    abstract = jax.eval_shape(strategy.init, key, jnp.zeros((n, space.genome_length), jnp.int32),
                              jnp.zeros((n, m), jnp.float32), params)
    gen, state, key, meta = restore_state(ckpt, abstract, key)
    for r in meta["archive"]:
      objectives.records[np.asarray(r["genome"], np.int32).tobytes()] = r
    evaluator.cache.update({bytes.fromhex(k): v for k, v in meta["cache"].items()})
    evaluator.stats.update(meta.get("evaluator_stats", {}))   # cumulative counts continue
    # Checkpoints written before hv_scale was saved: computed again (re-measured if measured).
    scale = (np.asarray(meta["hv_scale"], np.float32) if "hv_scale" in meta else hv_scale())
    print(f"[evonas_jax] resumed at generation {gen} ({len(objectives.records)} archs evaluated)",
          flush=True)
    writer.rewind(gen)   # generations after the checkpoint are redone: each row once
  else:
    gen = 0
    writer.rewind(-1)    # rows of an attempt that died before its first checkpoint
    scale = hv_scale()
    key, k_init = jax.random.split(key)
    pop0 = np.asarray(strategy.initial_population(k_init))
    t0 = time.time()
    before = _counters(evaluator, compile_stats)
    with tqdm(total=len(pop0), desc="generation 0", **pop_bar_kw) as bar:
      fit0, viol0, _ = objectives(pop0, 0, progress=lambda d: bar.update(d - bar.n))
    state = strategy.init(key, jnp.asarray(pop0), jnp.asarray(fit0), params,
                          violation=jnp.asarray(viol0))
    # Row first, then the checkpoint: a crash in between leaves a row after the checkpoint,
    # which the resume drops and rewrites (the other order would lose the row).
    _log_generation(writer, 0, state, strategy, names, scale, config, evaluator,
                    time.time() - t0, before, compile_stats)
    save_state(ckpt, 0, state, key, objectives, evaluator, scale)
  stop = config.num_generations if max_generations_this_run is None else min(
      config.num_generations, gen + max_generations_this_run)
  outer = tqdm(range(gen, stop), desc="search", unit="gen", dynamic_ncols=True, initial=gen,
               total=config.num_generations)
  for g in outer:
    t0 = time.time()
    before = _counters(evaluator, compile_stats)
    key, k_ask, k_tell = jax.random.split(key, 3)
    kids, state = strategy.ask(k_ask, state, params)
    kids = np.asarray(kids)
    with tqdm(total=len(kids), desc=f"generation {g + 1}", **pop_bar_kw) as bar:
      fit, viol, _ = objectives(kids, g + 1, progress=lambda d: bar.update(d - bar.n))
    state, _ = strategy.tell(k_tell, jnp.asarray(kids), jnp.asarray(fit), state, params,
                             violation=jnp.asarray(viol))
    row = _log_generation(writer, g + 1, state, strategy, names, scale, config, evaluator,
                          time.time() - t0, before, compile_stats)
    save_state(ckpt, g + 1, state, key, objectives, evaluator, scale)
    outer.set_postfix(hv=f"{row['hypervolume']:.4f}", pareto=row["num_pareto"],
                      hits=row["cache_hits"])
  outer.close()
  ckpt.close()
  writer.close()
  if stop < config.num_generations:
    print(f"[evonas_jax] stopped after generation {stop} of {config.num_generations}; rerun the "
          "same command to resume.", flush=True)
    return None
  return _finish(config, workdir, space, info, strategy, state, objectives, table, variables,
                 names, scale, t_start)


def _counters(evaluator, compile_stats) -> dict:
  """Cumulative evaluator counts and XLA compiles, to difference per generation."""
  c, s = compile_stats.snapshot(), evaluator.stats
  return {"cache_hits": s["cache_hits"], "evaluated": s["evaluated"],
          "compiles": c["compiles"], "compile_s": c["compile_s"]}


def _log_generation(writer, gen, state, strategy, names, scale, config, evaluator, seconds,
                    before=None, compile_stats=None):
  """One metrics.jsonl / TensorBoard row for generation `gen`: hypervolume and size of the
  population's front, cumulative cache hits / evaluations, and this generation's own cache
  hits, evaluations and XLA compiles (`before`: `_counters` at the generation's start)."""
  front = np.asarray(strategy.pareto_mask(state))
  fit = np.asarray(state.fitness)[front]
  row = {"hypervolume": _hypervolume(fit, scale) if len(fit) else 0.0,
         "num_pareto": int(front.sum()), "generation_seconds": seconds,
         "cache_hits": evaluator.stats["cache_hits"], "evaluated": evaluator.stats["evaluated"],
         "eval_seconds": evaluator.stats["eval_seconds"]}
  if before is not None and compile_stats is not None:
    now = _counters(evaluator, compile_stats)
    row.update({"gen_cache_hits": now["cache_hits"] - before["cache_hits"],
                "gen_evaluated": now["evaluated"] - before["evaluated"],
                "gen_xla_compiles": now["compiles"] - before["compiles"],
                "gen_xla_compile_s": round(now["compile_s"] - before["compile_s"], 2)})
  for i, n in enumerate(names):
    row[f"best_{n}"] = float(np.asarray(state.fitness)[:, i].min())
  writer.write(gen, **row)
  return row


# --------------------------------------------------------------------------- outputs
def pareto_records(state, strategy, objectives: Objectives) -> list[dict]:
  """The final population's feasible non-dominated set, deduplicated, sorted by error."""
  front = np.asarray(strategy.pareto_mask(state))
  out, seen = [], set()
  for g in np.asarray(state.population)[front]:
    k = np.asarray(g, np.int32).tobytes()
    if k not in seen:
      seen.add(k)
      out.append(dict(objectives.records[k]))
  return sorted(out, key=lambda r: (r["error"], r["latency_ms"]))


def _finish(config, workdir, space, info, strategy, state, objectives, table, variables, names,
            scale, t_start) -> dict:
  tm = config.latency_measure
  front = pareto_records(state, strategy, objectives)
  for r in front:
    r["arch"] = space.decode(r["genome"]).to_dict()
  lut = {}
  if table is not None:
    lut["device"] = table.meta["device"]
    lut["backend"] = table.backend
    lut["build_seconds"] = table.meta.get("build_seconds")
    if config.get("latency_table", ""):
      lut["table_file"] = os.path.basename(config.latency_table)
  if config.measure_pareto_latency:
    todo = front[:config.measure_pareto_max or len(front)]
    from tqdm.auto import tqdm
    for r in tqdm(todo, desc="measure Pareto latency", unit="arch", dynamic_ncols=True):
      r["measured_latency_ms"] = objectives.measure_ms(space.decode(r["genome"]))
      if table is not None:
        r["lut_latency_ms"] = (objectives.latency_ms(space.decode(r["genome"]))
                               if config.latency == "lut" else table.predict(space.decode(r["genome"])))
    if table is not None and len(todo) > 2:
      lut["spearman_rho_pareto"] = latency_lib.spearman(
          [r["lut_latency_ms"] for r in todo], [r["measured_latency_ms"] for r in todo])
  if table is not None and config.latency_validation_archs:
    rep = latency_lib.validate_table(table, space, max(int(info.num_classes), 1), info.image_shape,
                                     num_archs=config.latency_validation_archs, seed=config.seed,
                                     warmup=tm.warmup, runs=tm.runs, variables=variables,
                                     backend=config.get("latency_backend", "xla"),
                                     threads=tm.get("threads", 1))
    lut["spearman_rho_random"] = rep["spearman_rho"]
    lut["mean_abs_pct_error_random"] = rep["mean_abs_pct_error"]
    lut["num_random_archs"] = rep["num_archs"]
  archive = list(objectives.records.values())
  results = {
      "objectives": list(names), "latency_mode": config.latency,
      "space": space.name, "preset": space.preset, "dataset": info.name,
      "task": "classification" if objectives.rt is None else objectives.rt.name,
      "score": objectives.score_key, "decoder": objectives.decoder,
      "supernet_workdir": config.supernet_workdir or None,
      "population_size": config.population_size, "num_generations": config.num_generations,
      "num_evaluated": len(archive), "evaluator": config.evaluator.kind,
      "latency_table": lut, "pareto": front,
      "hypervolume": _hypervolume(np.array([[r[_UNITS[n]] for n in names] for r in front],
                                           np.float32), scale),
      "wall_seconds": time.time() - t_start,
      "provenance": provenance(),
  }
  write_json_atomic(os.path.join(workdir, "pareto.json"), results, indent=1)
  write_csv(os.path.join(workdir, "pareto.csv"), front, lut, objectives.score_key)
  plot_pareto(archive, front, os.path.join(workdir, "pareto.png"),
              f"latency (ms, {'lookup table' if config.latency == 'lut' else 'measured'})",
              objectives.score_key, objectives=names)
  plot_hypervolume(MetricWriter(workdir, tensorboard=False).read(),
                   os.path.join(workdir, "hypervolume.png"))
  summary = {k: v for k, v in results.items() if k != "pareto"}
  summary["pareto_size"] = len(front)
  # Last and atomic: results.json marks the search finished (a rerun then refuses the workdir).
  write_json_atomic(os.path.join(workdir, "results.json"), summary, indent=1)
  print_table(front, lut, workdir, objectives.score_key)
  return results


CSV_FIELDS = ("accuracy", "error", "latency_ms", "measured_latency_ms", "macs", "params",
              "generation")


def write_csv(path: str, front: list[dict], lut: dict, score: str = "accuracy") -> None:
  fields = (score, *CSV_FIELDS[1:])
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["rank", *fields, "lut_spearman_rho_pareto", "lut_spearman_rho_random",
                "genome", "arch"])
    for i, r in enumerate(front):
      w.writerow([i, *[r.get(k, "") for k in fields], lut.get("spearman_rho_pareto", ""),
                  lut.get("spearman_rho_random", ""), " ".join(map(str, r["genome"])),
                  json.dumps(r["arch"])])


# Axis of each objective in the plots: (record field, label, scale); "error" is drawn as its
# score, MACs and params in millions.
def _axis(name: str, score: str, latency_label: str) -> tuple[str, str, float]:
  return {"error": (score, f"validation {score}", 1.0),
          "latency": ("latency_ms", latency_label, 1.0),
          "macs": ("macs", "MACs (M)", 1e-6), "params": ("params", "params (M)", 1e-6)}[name]


def plot_pareto(archive: list[dict], front: list[dict], path: str,
                latency_label: str = "latency (ms)", score: str = "accuracy",
                objectives=("error", "latency", "macs")) -> None:
  """One panel per pair of the search's objectives (three objectives: three panels): every
  evaluated arch of the archive coloured by generation, the final front circled on top. The
  error objective is drawn as its score (accuracy / AbsRel / mIoU). With a single objective it
  is drawn against MACs. Records: the archive's dicts (fields accuracy/error, latency_ms, macs,
  params, generation); writes a PNG to `path`."""
  import itertools

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(objectives)
  if len(names) < 2:
    names = names + [n for n in ("macs", "error") if n not in names][:1]
  pairs = list(itertools.combinations(names, 2))
  # The score reads best on the y axis, as in the old two-panel plot.
  pairs = [(b, a) if a == "error" else (a, b) for a, b in pairs]
  fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs) + 0.8, 4), squeeze=False,
                           layout="constrained")
  axes = axes[0]
  gen = np.array([r["generation"] for r in archive])
  sc = None
  for ax, (xn, yn) in zip(axes, pairs):
    (xf, xl, xs), (yf, yl, ys) = _axis(xn, score, latency_label), _axis(yn, score, latency_label)
    sc = ax.scatter([r[xf] * xs for r in archive], [r[yf] * ys for r in archive], c=gen,
                    cmap="viridis", s=12, alpha=0.7, label="archive")
    ax.scatter([r[xf] * xs for r in front], [r[yf] * ys for r in front], facecolors="none",
               edgecolors="red", s=60, linewidths=1.5, label="Pareto set")
    ax.set(xlabel=xl, ylabel=yl)
    ax.legend(loc="best", fontsize=8)
  fig.suptitle(f"objectives: {', '.join(objectives)} ({len(front)} on the front, "
               f"{len(archive)} evaluated)")
  if sc is not None:
    fig.colorbar(sc, ax=list(axes), label="generation")
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_hypervolume(rows: list[dict], path: str) -> None:
  """Hypervolume of the population's front per generation (left axis) and the front's size
  (right axis), from the metrics.jsonl rows of a search; writes a PNG to `path`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator
  rows = sorted((r for r in rows if "hypervolume" in r), key=lambda r: r["step"])
  fig, ax = plt.subplots(figsize=(6, 3.6))
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.plot([r["step"] for r in rows], [r["hypervolume"] for r in rows], marker="o",
          color="tab:blue")
  ax.set(xlabel="generation", ylabel="hypervolume (normalised objectives, ref 1.1)")
  ax2 = ax.twinx()
  ax2.plot([r["step"] for r in rows], [r["num_pareto"] for r in rows], marker="s",
           linestyle="--", color="tab:orange")
  ax2.set_ylabel("front size", color="tab:orange")
  ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def print_table(front: list[dict], lut: dict, workdir: str, score: str = "accuracy") -> None:
  name = {"accuracy": "val acc", "abs_rel": "AbsRel ", "miou": "mIoU   "}.get(score, score[:7])
  print(f"\n  # | {name} | latency ms (LUT) | measured ms |    MACs    |  params  | depths")
  print("----+---------+------------------+-------------+------------+----------+---------")
  for i, r in enumerate(front):
    meas = r.get("measured_latency_ms")
    depths = ",".join(str(sum(d)) for d in r["arch"]["depth"])
    print(f" {i:2d} | {r[score]:.4f}  | {r['latency_ms']:16.3f} | "
          f"{'' if meas is None else f'{meas:11.3f}':>11} | {r['macs'] / 1e6:8.2f} M | "
          f"{r['params'] / 1e6:6.3f} M | {depths}")
  rho = ", ".join(f"{k} {v:.3f}" for k, v in lut.items() if k.startswith("spearman"))
  if rho:
    print(f"\nlatency table ({lut.get('device')}): Spearman rho {rho}")
  print(f"outputs in {workdir}: pareto.json, pareto.csv, pareto.png, hypervolume.png, "
        "metrics.jsonl, tensorboard/")
