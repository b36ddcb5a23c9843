"""Standalone EvoNet export: one searched subnet -> a folder anyone can run with numpy + jax.

    export_subnet(workdir, select, out=None, ...) -> ExportResult

`workdir` is a search workdir (pareto.json + config.json naming its `supernet_workdir`) or a
training workdir (config.json + final/). `select` picks the subnet: an int / "3" is row 3 of
pareto.json; a budget such as "latency_ms<=2.5" (clauses joined by '&') is the most accurate
pareto row that meets it (`evonas_jax.front_select`); a genome (a list, or "0,1,2,..." as on the command line) is validated by the space
with its own error messages. The export folder holds

  arch.json              arch, genome, space, num_classes, image_shape, normalisation, objectives
                         (from the pareto row, if any), cost, provenance (versions, git
                         commit, devices: `evonas_jax.provenance`), artifact descriptions
  params/                orbax checkpoint of the SLICED variables {'params', 'batch_stats'} of
                         `subnet_model(space, arch, num_classes)`, BatchNorm recalibrated for
                         THIS subnet (the supernet's shared statistics fit no single subnet)
  params.npz             the same variables flattened: "params/stem/conv/kernel" -> array
  model_<platform>.jax_export
                         serialized `jax.export` of f(flat_variables, images) -> outputs, the
                         variables an argument (not baked-in constants), lowered per platform;
                         `flat_variables` is exactly the dict that `np.load("params.npz")` gives.
                         `jax.export` artifacts load only in JAX versions inside its
                         serialization compatibility window (about 6 months): for long-lived
                         deployment use the ONNX file.
  model.onnx             (formats include "onnx") the subnet as standard ONNX ops, weights as
                         initializers, input "images" (B, H, W, C) float32, symbolic batch;
                         checked against JAX with onnxruntime on the calibration images (the
                         differences are recorded in arch.json)
  model.int8.onnx        (formats include "onnx,int8"; classification only) static int8 QDQ
                         quantisation of model.onnx (`evonas_jax.export_int8`: per-channel
                         symmetric int8 weights, per-tensor int8 activations calibrated on the
                         BN calibration images); arch.json `artifacts.int8` records fp32 and
                         int8 top-1 accuracy on the validation split, the drop, batch-1
                         onnxruntime latency of both (1 thread), and status "ok" or "rejected"
                         (drop > int8_max_drop; the file is still written, for inspection)

Batch dimension: symbolic ("b") unless `batch_size` is given. The CUDA artifact of an arch with
SS2D blocks first tries the Pallas Triton selective scan; the Triton lowering cannot take a
symbolic grid, so with a symbolic batch it falls back (printed) to the lax.scan reference; with a
fixed `batch_size` the Pallas kernel is kept. The CPU artifact always uses the reference scan.

A task (the network family trained in the workdir) is a registry entry: `TASKS[name]` builds
(module for an arch, extract function) from the training config. Classification EvoNet is the
only one so far; a dense-prediction model registers the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.space import Arch, SearchSpace, get_space

FORMAT = "evonas_jax.export/1"
PLATFORMS = ("cpu", "cuda")
SPACE_FIELDS = ("max_depths", "mlp_choices", "d_state_choices", "expand_choices")
_TRITON = "__gpu$xla.gpu.triton"


# --------------------------------------------------------------------------- tasks (registry)
@dataclasses.dataclass(frozen=True)
class Task:
  """How to turn a supernet into a standalone network for one task.

  make_module(arch, scan_backend) -> flax module whose apply(variables, images) runs the subnet;
  extract(supernet_variables, arch) -> that module's variables {'params', 'batch_stats'};
  output: a description of what apply returns (written to arch.json).
  """
  name: str
  make_module: Callable[[Arch, str], Any]
  extract: Callable[[Any, Arch], Any]
  output: str


def _classification_task(train_cfg: dict, space: SearchSpace, num_classes: int) -> Task:
  from evonas_jax.nn.supernet import extract_subnet, subnet_model
  del train_cfg   # nothing task-specific in the config yet
  return Task(
      name="classification",
      make_module=lambda arch, backend: subnet_model(space, arch, num_classes,
                                                     scan_backend=backend),
      extract=lambda variables, arch: extract_subnet(variables, space, arch),
      output=f"logits float32 (batch, {num_classes})")


def _dense_task(train_cfg: dict, space: SearchSpace, num_classes: int) -> Task:
  """Depth / segmentation: the sliced DenseEvoNet (backbone + decoder). train_cfg needs "task",
  "head_cfg" and "max_depth" (the exporter writes them to arch.json)."""
  from evonas_jax.nn.dense import DenseEvoNet, extract_dense_subnet
  from evonas_jax.nn.supernet import subnet_spec
  name = train_cfg["task"]
  from evonas_jax.task_runtime import hashable_head_cfg
  head_cfg = hashable_head_cfg(train_cfg.get("head_cfg"))
  max_depth = float(train_cfg.get("max_depth", 10.0))
  out = ({"depth": "float32 (batch, H, W) metres"} if name == "depth" else
         {"logits": f"float32 (batch, H, W, {num_classes})", "aux_logits": "same (aux FCN head)"})
  return Task(
      name=name,
      make_module=lambda arch, backend: DenseEvoNet(
          subnet_spec(space, arch), head=name, head_cfg=head_cfg, num_classes=num_classes,
          max_depth=max_depth, scan_backend=backend),
      extract=lambda variables, arch: extract_dense_subnet(variables, space, arch),
      output=json.dumps(out))


# name -> builder(train_cfg dict, space, num_classes) -> Task.
TASKS: dict[str, Callable[[dict, SearchSpace, int], Task]] = {
    "classification": _classification_task,
    "depth": _dense_task,
    "segmentation": _dense_task,
}


def build_task(train_cfg: dict, space: SearchSpace, num_classes: int) -> Task:
  """The Task of a training config (`task` field; absent = classification)."""
  name = (train_cfg or {}).get("task", "classification")
  if name not in TASKS:
    raise ValueError(f"training config task={name!r} has no exporter; allowed: {tuple(TASKS)}")
  return TASKS[name](train_cfg or {}, space, num_classes)


# --------------------------------------------------------------------------- space <-> json
def space_to_dict(space: SearchSpace) -> dict:
  """name, preset and the fields that differ from the registered preset (smoke-test spaces)."""
  base = get_space(space.name, space.preset)
  over = {f: list(getattr(space, f)) for f in SPACE_FIELDS if getattr(space, f) != getattr(base, f)}
  return {"name": space.name, "preset": space.preset, "overrides": over}


def space_from_dict(d: dict) -> SearchSpace:
  space = get_space(d["name"], d["preset"])
  over = {k: tuple(v) for k, v in d.get("overrides", {}).items()}
  return dataclasses.replace(space, **over) if over else space


# --------------------------------------------------------------------------- variables
def flatten_variables(variables) -> dict[str, np.ndarray]:
  """Nested variables -> {"params/stem/conv/kernel": array} (what params.npz holds).

  Arrays become numpy arrays; ShapeDtypeStructs (abstract variables) are kept as they are.
  """
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {"/".join(str(k.key) for k in path):
          v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(v) for path, v in leaves}


def unflatten_variables(flat: dict) -> dict:
  out: dict = {}
  for name, v in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def make_bn_step(module):
  """Train-mode forward of the standalone network -> its new batch_stats (recalibration)."""
  @jax.jit
  def step(variables, images):
    _, upd = module.apply(variables, images, train=True, mutable=["batch_stats"],
                          rngs={"dropout": jax.random.key(0)})
    return upd["batch_stats"]
  return step


def recalibrate(module, variables, batches, progress: bool = True):
  """BatchNorm statistics of THIS subnet: the exact statistics of its BN inputs over `batches`
  (`evonas_jax.evaluate.bn`, the procedure training evaluation and the search use), run on the
  sliced network (cheaper to compile). The exported network has no stochastic depth, so none is
  applied here either.
  """
  if not batches or "batch_stats" not in variables:
    return variables
  from tqdm.auto import tqdm
  from evonas_jax.evaluate import recalibrated
  step = make_bn_step(module)
  with tqdm(total=len(batches), desc="BN recalibration", unit="batch", disable=not progress,
            dynamic_ncols=True, leave=False) as bar:
    def forward(bs, images):
      out = step({**variables, "batch_stats": bs}, images)
      bar.update(1)
      return out
    out = recalibrated(forward, variables, batches)
  return {**out, "batch_stats": jax.device_get(out["batch_stats"])}


# --------------------------------------------------------------------------- sources
@dataclasses.dataclass
class Source:
  """What a workdir provides: the space, the data config, the supernet loader, the front."""
  kind: str                      # "search" | "train"
  workdir: str
  space: SearchSpace
  data_cfg: Any
  train_cfg: dict
  supernet_workdir: str | None   # None: a random supernet (search without one)
  pareto: list[dict] | None
  calib: dict                    # batches, batch_size, seed: the BN recalibration default
  search_cfg: Any = None


def _read_json(path: str) -> dict:
  """A JSON object from `path`; ValueError naming the file when it is unreadable / not one."""
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None
  if not isinstance(d, dict):
    raise ValueError(f"{path} holds a {type(d).__name__}, expected a JSON object")
  return d


def _field(d: dict, key: str, path: str, types=None):
  """d[key], or ValueError naming the file and the field when it is missing / mistyped."""
  if key not in d:
    raise ValueError(f"{path} has no field {key!r}")
  v = d[key]
  if types is not None and (isinstance(v, bool) and bool not in (types if isinstance(
      types, tuple) else (types,)) or not isinstance(v, types)):
    raise ValueError(f"{path}: field {key!r} = {v!r} is not a {types}")
  return v


def _data_cfg(d: dict):
  if "crop_size" in d:   # a dense dataset (evonas_jax.data.dense)
    from evonas_jax.data.dense import dense_config_defaults
    c = dense_config_defaults(d["name"])
    c.update({k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    return c
  from evonas_jax import data as data_lib
  c = data_lib.get_config_defaults()
  c.update(d)
  return c


def _dense_rt(src):
  """The TaskRuntime of a dense source (None for classification)."""
  if (src.train_cfg or {}).get("task", "classification") == "classification":
    return None
  from evonas_jax.task_runtime import runtime_from_train_config
  return runtime_from_train_config(src.train_cfg)[0]


def _resolve_supernet_dir(path: str, search_workdir: str) -> str:
  cands = [os.path.abspath(os.path.expanduser(path))]
  if not os.path.isabs(path):   # a relative path is relative to where the search ran: try both
    cands.append(os.path.abspath(os.path.join(search_workdir, path)))
  for c in cands:
    if os.path.isfile(os.path.join(c, "config.json")) and os.path.isdir(os.path.join(c, "final")):
      return c
  raise FileNotFoundError(f"the search's supernet_workdir {path!r} has no config.json + final/ "
                          f"(looked in {cands})")


def _space_of(cfg: dict, path: str) -> SearchSpace:
  name, preset = _field(cfg, "space", path, str), _field(cfg, "preset", path, str)
  try:
    return get_space(name, preset)
  except (ValueError, KeyError) as e:
    raise ValueError(f"{path}: space {name!r} / preset {preset!r}: {e}") from None


def open_source(workdir: str) -> Source:
  """Reads a search or training workdir's configs (no weights are loaded here)."""
  import ml_collections
  workdir = os.path.abspath(os.path.expanduser(workdir))
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"--workdir {workdir} has no config.json: expected a search workdir "
                            "(pareto.json) or a training workdir (final/)")
  cfg = _read_json(cfg_path)
  pareto_path = os.path.join(workdir, "pareto.json")
  if os.path.lexists(pareto_path):
    if not os.path.isfile(pareto_path):
      raise ValueError(f"{pareto_path} is not a file")
    scfg = ml_collections.ConfigDict(cfg)
    pareto = _field(_read_json(pareto_path), "pareto", pareto_path, list)
    for i, r in enumerate(pareto):
      if not isinstance(r, dict):
        raise ValueError(f"{pareto_path}: row {i} is a {type(r).__name__}, expected an object "
                         "with a 'genome'")
    ev = _field(cfg, "evaluator", cfg_path, dict)
    # The search's own calibration batches (DMMPE draws them the same way), so the exported
    # statistics are the ones the search measured the subnet's accuracy with.
    calib = {"batches": _field(ev, "calib_batches", cfg_path + " evaluator", int),
             "batch_size": _field(ev, "calib_batch_size", cfg_path + " evaluator", int),
             "seed": _field(cfg, "seed", cfg_path, int)}
    sup_dir = cfg.get("supernet_workdir")
    if sup_dir is not None and not isinstance(sup_dir, str):
      raise ValueError(f"{cfg_path}: field 'supernet_workdir' = {sup_dir!r} is not a path")
    if sup_dir:
      sup = _resolve_supernet_dir(sup_dir, workdir)
      tcfg_path = os.path.join(sup, "config.json")
      tcfg = _read_json(tcfg_path)
      return Source("search", workdir, _space_of(tcfg, tcfg_path),
                    _data_cfg(_field(tcfg, "data", tcfg_path, dict)), tcfg, sup, pareto, calib,
                    scfg)
    over = {k: tuple(v) for k, v in cfg.get("space_overrides", {}).items() if v}
    space = _space_of(cfg, cfg_path)
    space = dataclasses.replace(space, **over) if over else space
    return Source("search", workdir, space, _data_cfg(_field(cfg, "data", cfg_path, dict)), {},
                  None, pareto, calib, scfg)
  if os.path.isdir(os.path.join(workdir, "final")):
    calib = {"batches": cfg.get("bn_calibration_batches", 0),
             "batch_size": cfg.get("bn_calibration_batch_size", cfg.get("eval_batch_size", 128)),
             "seed": cfg.get("seed", 0) + 1}
    return Source("train", workdir, _space_of(cfg, cfg_path),
                  _data_cfg(_field(cfg, "data", cfg_path, dict)), cfg, workdir, None, calib)
  raise FileNotFoundError(f"--workdir {workdir} is neither a finished search (pareto.json) nor a "
                          "finished training run (final/)")


def load_supernet_variables(src: Source):
  """(supernet variables, DatasetInfo) of the source."""
  from evonas_jax import data as data_lib, search_lib
  from evonas_jax.checkpoint import load_pytree
  if src.supernet_workdir:
    # Restored as saved, without initialising a supernet as the target (that costs a compile):
    # extract_subnet then fails loudly on a checkpoint that does not fit the space.
    variables = jax.tree.map(np.asarray, load_pytree(os.path.join(src.supernet_workdir, "final")))
    rt = _dense_rt(src)
    return variables, (rt.info if rt is not None else data_lib.dataset_info(src.data_cfg))
  print("[evonas_jax] WARNING: this search used no supernet_workdir; exporting from the same "
        "RANDOMLY INITIALISED supernet (seed from its config). Tests only.", flush=True)
  _, _, variables, _, info, _ = search_lib.random_supernet(src.search_cfg)
  return jax.device_get(variables), info


# --------------------------------------------------------------------------- selection
def parse_select(select) -> int | list[int]:
  """"3" / 3 -> pareto row 3; "0,1,2,..." / a sequence -> a genome (list of ints)."""
  allowed = ("a pareto.json row index (e.g. 3) or a genome as a comma list of gene indices "
             "(e.g. 0,1,2,...)")
  if isinstance(select, (int, np.integer)):
    return int(select)
  if isinstance(select, str):
    parts = [p.strip() for p in select.strip().strip("[]").split(",")]
    try:
      vals = [int(p) for p in parts if p]
    except ValueError:
      raise ValueError(f"--select={select!r} is not {allowed}") from None
    if not vals:
      raise ValueError(f"--select is empty; expected {allowed}")
    return vals[0] if len(parts) == 1 else vals
  try:
    return [int(v) for v in select]
  except (TypeError, ValueError):
    raise ValueError(f"--select={select!r} is not {allowed}") from None


def select_subnet(src: Source, select):
  """(arch, genome (G,) int32, pareto row dict or None, row index or None, default name).

  `select` may also be a budget over the front's fields ("latency_ms<=2.5", clauses joined by
  '&'): the lowest-error pareto row that satisfies it (`front_select.choose`)."""
  from evonas_jax import front_select
  if select is None or (isinstance(select, str) and not select.strip()):
    # A fine-tuned workdir (`evonas_jax.finetune`) trained exactly one subnet: that is the default.
    fixed = (src.train_cfg or {}).get("fixed_subnet") if src.kind == "train" else None
    if not fixed:
      raise ValueError(f"--select is required for {src.workdir}: a pareto.json row index, a "
                       "genome as a comma list, or a budget such as 'latency_ms<=2.5'")
    select = list(fixed)
  if front_select.is_constraint(select):
    if src.pareto is None:
      raise ValueError(f"--select={select!r} is a budget over a search front, but {src.workdir} "
                       "is a training workdir (no pareto.json); pass a genome instead")
    select = front_select.choose(src.pareto, select)
  sel = parse_select(select)
  if isinstance(sel, int):
    if src.pareto is None:
      raise ValueError(f"--select={sel} is a pareto.json row, but {src.workdir} is a training "
                       f"workdir (no pareto.json); pass a genome instead: "
                       f"{src.space.genome_length} comma-separated gene indices for genes "
                       f"{list(src.space.gene_names)}")
    n = len(src.pareto)
    if not 0 <= sel < n:
      raise ValueError(f"--select={sel}: pareto.json of {src.workdir} has {n} rows; allowed row "
                       f"indices 0..{n - 1}, or a genome as a comma list")
    row = src.pareto[sel]
    if not isinstance(row, dict) or "genome" not in row:
      raise ValueError(f"--select={sel}: row {sel} of {src.workdir}/pareto.json has no 'genome'")
    try:
      genome = src.space.validate(row["genome"])
    except (ValueError, TypeError) as e:
      raise ValueError(f"--select={sel}: row {sel} of {src.workdir}/pareto.json has no valid "
                       f"genome: {e}") from None
    return src.space.decode(genome), genome, row, sel, f"pareto_{sel}"
  try:
    genome = src.space.validate(np.asarray(sel))   # names the bad gene and its allowed values
  except (ValueError, TypeError) as e:
    raise ValueError(f"--select={select!r} is not a genome of this space: {e}") from None
  row, idx = None, None
  for i, r in enumerate(src.pareto or []):
    if list(r["genome"]) == genome.tolist():
      row, idx = r, i
  name = "genome_" + hashlib.sha1(genome.tobytes()).hexdigest()[:8]
  return src.space.decode(genome), genome, row, idx, name


# --------------------------------------------------------------------------- lowering
def _has_ss2d(arch: Arch) -> bool:
  return "ss2d" in arch.block_type


def lower(task: Task, arch: Arch, flat_spec: dict, image_shape, platform: str,
          batch_size: int = 0, log=print):
  """jax.export.Exported of f(flat_variables, images) for `platform`, and (backend, batch).

  Tries the Pallas scan for CUDA when the arch has SS2D blocks, falling back to the reference.
  """
  from jax import export
  if platform not in PLATFORMS:
    raise ValueError(f"--platforms: unknown platform {platform!r}; allowed: {PLATFORMS}")
  if batch_size:
    batch = batch_size
  else:
    batch, = export.symbolic_shape("b")
  images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  tries = ["reference"]
  if platform == "cuda" and _has_ss2d(arch):
    tries = ["pallas", "reference"]
  for i, backend in enumerate(tries):
    module = task.make_module(arch, backend)

    def f(flat, x, module=module):
      return module.apply(unflatten_variables(flat), x)
    checks = [export.DisabledSafetyCheck.custom_call(_TRITON)] if backend == "pallas" else []
    try:
      exp = export.export(jax.jit(f), platforms=[platform], disabled_checks=checks)(flat_spec,
                                                                                   images)
      return exp, backend, (batch_size or "b")
    except Exception as e:   # noqa: BLE001 - any lowering failure: report it, try the next backend
      if i + 1 == len(tries):
        raise
      log(f"[evonas_jax] note: {platform} lowering with the {backend} selective scan failed "
          f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); using the "
          f"{tries[i + 1]} scan instead"
          + ("" if batch_size else " (pass --batch_size B: the Pallas kernel needs a fixed batch)"))
  raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the export
@dataclasses.dataclass
class ExportResult:
  out: str
  meta: dict
  variables: Any       # the exported (sliced, recalibrated) variables, host arrays


def _calib_batches(src: Source, n: int, batch_size: int, seed: int) -> list[np.ndarray]:
  from evonas_jax import data as data_lib
  if n <= 0:
    return []
  rt = _dense_rt(src)
  it = (rt.train_iterator(src.data_cfg, batch_size, seed, 0, 1) if rt is not None else
        data_lib.train_iterator(src.data_cfg, batch_size, seed=seed))
  return [np.asarray(next(it)["image"]) for _ in range(n)]


# "int8" is model.int8.onnx, quantised from model.onnx (so it needs "onnx" in the list too).
FORMATS = ("jax_export", "onnx", "int8")
# ONNX vs JAX on the calibration images: max |onnx - jax| <= ONNX_TOL * max(1, max |jax|). Both
# run the same float32 graph; measured differences are ~1e-7 relative (operation order only).
ONNX_TOL = 1e-4


def _comma_list(value, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
  """"a,b" or a sequence -> ("a", "b"); every item must be in `allowed` (the error names the
  flag, the unknown items and the allowed ones)."""
  items = tuple(p.strip() for p in (value.split(",") if isinstance(value, str) else value)
                if p.strip())
  bad = [p for p in items if p not in allowed]
  if bad or not items:
    raise ValueError(f"--{flag}={value!r}: unknown {bad or 'empty list'}; allowed (comma "
                     f"separated): {allowed}")
  return items


def _export_onnx(tmp: str, ref_module, sliced, image_shape, images: np.ndarray, log) -> dict:
  """model.onnx in `tmp` (weights as initializers, symbolic batch), checked against JAX on
  `images` with onnxruntime; raises if they differ by more than ONNX_TOL."""
  from evonas_jax import export_onnx
  export_onnx.require()
  def fn(x):
    return ref_module.apply(sliced, x)
  # Output structure from shapes alone (no compile); the reference outputs are computed once.
  names = export_onnx.output_names(jax.eval_shape(fn, jnp.asarray(images[:1])))
  log(f"[evonas_jax] ONNX: converting (outputs {names}) ...")
  desc = export_onnx.convert(fn, image_shape, os.path.join(tmp, "model.onnx"), names)
  want = export_onnx.flatten_outputs(jax.jit(fn)(jnp.asarray(images)))
  got = export_onnx.run(os.path.join(tmp, "model.onnx"), images)
  diffs = {}
  for name, w in zip(names, want):
    g = got[name]
    if g.shape != w.shape:
      raise RuntimeError(f"ONNX output {name!r} has shape {g.shape}, JAX {w.shape}")
    diffs[name] = {"max_abs_diff": float(np.max(np.abs(g - w))),
                   "max_abs_jax": float(np.max(np.abs(w)))}
    bound = ONNX_TOL * max(1.0, diffs[name]["max_abs_jax"])
    if not diffs[name]["max_abs_diff"] <= bound:
      raise RuntimeError(f"ONNX output {name!r} differs from JAX by "
                         f"{diffs[name]['max_abs_diff']:.3g} > {bound:.3g} on {len(images)} "
                         "calibration images: the converter mis-translated an op")
  desc["check"] = {"images": int(len(images)), "source": "BN calibration images (train split)",
                   "runtime": "onnxruntime CPU", "outputs": diffs, "tolerance": ONNX_TOL}
  log(f"[evonas_jax] ONNX: {desc['nodes']} nodes, {desc['bytes'] / 2**20:.1f} MiB, "
      f"{desc['seconds']:.0f} s; onnxruntime vs JAX max |diff| "
      + ", ".join(f"{k} {v['max_abs_diff']:.2g}" for k, v in diffs.items()))
  return desc


def _check_parent_dir(path: str, flag: str) -> None:
  """Raises NotADirectoryError naming --flag when an existing ancestor of `path` is a file."""
  parent = os.path.dirname(os.path.abspath(path))
  while parent and not os.path.exists(parent):
    nxt = os.path.dirname(parent)
    if nxt == parent:
      break
    parent = nxt
  if parent and os.path.exists(parent) and not os.path.isdir(parent):
    raise NotADirectoryError(f"--{flag} {path}: {parent} is a file, not a directory")


def plan_export(workdir: str, select, out: str | None = None, *, batch_size: int = 0,
                platforms=PLATFORMS, bn_recalib_batches: int | None = None,
                overwrite: bool = False, formats=("jax_export",), int8_max_drop: float = 0.01,
                int8_val_images: int = 1000):
  """Every check `export_subnet` runs before loading weights (no file is written): raises
  ValueError / FileNotFoundError / FileExistsError naming the flag or file. Returns
  (src, arch, genome, row, row_idx, name, out, platforms, formats, dense)."""
  plats = _comma_list(platforms, PLATFORMS, "platforms")
  fmts = _comma_list(formats, FORMATS, "formats")
  if "int8" in fmts and "onnx" not in fmts:
    raise ValueError(f"--formats={','.join(fmts)}: int8 is quantised from model.onnx, so it needs "
                     "onnx in the list too: pass --formats onnx,int8 (or jax_export,onnx,int8)")
  if not (isinstance(int8_val_images, int) and 1 <= int8_val_images <= 2 ** 31 - 1):
    raise ValueError(f"--int8_val_images={int8_val_images!r} must be an int in [1, 2**31 - 1]")
  if not isinstance(batch_size, int) or not 0 <= batch_size <= 2 ** 31 - 1:
    raise ValueError(f"--batch_size={batch_size!r} must be an int >= 0 (0 = symbolic batch)")
  if not (isinstance(int8_max_drop, (int, float)) and not isinstance(int8_max_drop, bool)
          and math.isfinite(int8_max_drop) and -1 <= int8_max_drop <= 1):
    # Negative is a stricter budget, not an error: int8 must then beat fp32 by that much.
    raise ValueError(f"--int8_max_drop={int8_max_drop!r} must be a number in [-1, 1] (an "
                     "absolute top-1 accuracy drop; negative: int8 must beat fp32 by that much)")
  if bn_recalib_batches is not None and not 0 <= bn_recalib_batches <= 2 ** 31 - 1:
    raise ValueError(f"--bn_recalib_batches={bn_recalib_batches} must be in [0, 2**31 - 1] (0 = keep the "
                     "supernet's shared statistics)")
  src = open_source(workdir)
  arch, genome, row, row_idx, name = select_subnet(src, select)
  out = os.path.abspath(out or os.path.join(src.workdir, "export", name))
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} exists; refusing to overwrite it (pass --overwrite, or choose "
                          "another --out)")
  _check_parent_dir(out, "out")

  dense = (src.train_cfg or {}).get("task", "classification") != "classification"
  if dense and "int8" in fmts:
    raise ValueError(
        f"--formats={','.join(fmts)}: int8 quantisation is classification-only (its accuracy "
        f"check is top-1); for a {src.train_cfg['task']} subnet use --formats jax_export,onnx")
  return src, arch, genome, row, row_idx, name, out, plats, fmts, dense


def export_subnet(workdir: str, select, out: str | None = None, *, batch_size: int = 0,
                  platforms=PLATFORMS, bn_recalib_batches: int | None = None,
                  overwrite: bool = False, formats=("jax_export",),
                  int8_max_drop: float = 0.01, int8_val_images: int = 1000,
                  log=print) -> ExportResult:
  """Writes the export folder (see the module docstring) and returns what it wrote.

  formats: "jax_export" (the `jax.export` artifacts, one per platform) and/or "onnx"
  (model.onnx, checked against JAX with onnxruntime on the calibration images) and/or "int8"
  (model.int8.onnx, needs "onnx" too and a classification task; see `evonas_jax.export_int8`).
  int8_max_drop: the absolute top-1 accuracy the int8 model may lose against model.onnx on the
  first int8_val_images validation images; above it artifacts.int8.status is "rejected" (the
  folder is still written and the result returned: the CLI then exits non-zero).
  batch_size: 0 = symbolic batch dimension in the artifacts, else that fixed batch.
  bn_recalib_batches: None = the workdir's config (the search's calib_batches, or the training
  run's bn_calibration_batches); 0 = keep the supernet's shared statistics (not recommended).
  Refuses to overwrite an existing `out` unless overwrite=True; the folder is written under a
  temporary name and moved into place at the end, so a failed export leaves nothing half-written.
  """
  t0 = time.time()
  plan = plan_export(workdir, select, out, batch_size=batch_size, platforms=platforms,
                     bn_recalib_batches=bn_recalib_batches, overwrite=overwrite,
                     formats=formats, int8_max_drop=int8_max_drop,
                     int8_val_images=int8_val_images)
  src, arch, genome, row, row_idx, name, out, plats, fmts, dense = plan
  variables, info = load_supernet_variables(src)
  task_cfg = dict(src.train_cfg or {})
  if dense:
    task_cfg["max_depth"] = float(info.max_depth)
  task = build_task(task_cfg, src.space, info.num_classes)
  image_shape = tuple(int(s) for s in info.image_shape)
  ref_module = task.make_module(arch, "reference")
  sliced = jax.device_get(task.extract(variables, arch))
  n_calib = src.calib["batches"] if bn_recalib_batches is None else bn_recalib_batches
  if n_calib == 0 and "batch_stats" in sliced:
    log("[evonas_jax] WARNING: no BatchNorm recalibration: the supernet's shared statistics fit "
        "no single subnet (small subnets can evaluate near chance)")
  batches = _calib_batches(src, n_calib, src.calib["batch_size"], src.calib["seed"])
  sliced = recalibrate(ref_module, sliced, batches)
  flat = flatten_variables(sliced)

  from evonas_jax.checkpoint import save_pytree
  from evonas_jax.nn.cost import arch_cost
  from evonas_jax.provenance import provenance
  if dense:
    from evonas_jax.nn.dense import dense_cost
    cost = dense_cost(ref_module, sliced, image_shape)
    cost = types.SimpleNamespace(macs=int(cost["macs"]), params=int(cost["params"]))
  else:
    cost = arch_cost(src.space, arch, image_shape, info.num_classes)
  tmp = f"{out}.tmp-{os.getpid()}"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  try:
    save_pytree(os.path.join(tmp, "params"), sliced)
    np.savez(os.path.join(tmp, "params.npz"), **flat)
    flat_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
    artifacts = {}
    for p in (plats if "jax_export" in fmts else ()):
      exp, backend, batch = lower(task, arch, flat_spec, image_shape, p, batch_size, log)
      blob = exp.serialize()
      fname = f"model_{p}.jax_export"
      with open(os.path.join(tmp, fname), "wb") as f:
        f.write(blob)
      artifacts[p] = {"file": fname, "platforms": list(exp.platforms), "scan_backend": backend,
                      "batch": batch, "bytes": len(blob)}
    if "onnx" in fmts:
      check = (np.concatenate(batches)[:32] if batches else
               np.asarray(_calib_batches(src, 1, 8, src.calib["seed"])[0]))
      artifacts["onnx"] = _export_onnx(tmp, ref_module, sliced, image_shape, check, log)
    if "int8" in fmts:
      from evonas_jax import export_int8
      # Calibrated on the BN calibration images (the images the exported statistics come from;
      # one batch of them when BN recalibration is off), evaluated on held-out validation images.
      calib_images = (np.concatenate(batches) if batches else np.asarray(
          _calib_batches(src, 1, src.calib["batch_size"], src.calib["seed"])[0]))
      val_images, val_labels = export_int8.validation_set(src.data_cfg, int8_val_images)
      log(f"[evonas_jax] int8: quantising model.onnx (calibration: {len(calib_images)} images; "
          f"evaluation: {len(val_images)} validation images) ...")
      artifacts["int8"] = export_int8.int8_artifact(tmp, calib_images, val_images, val_labels,
                                                    max_drop=int8_max_drop, log=log)
    ds = src.data_cfg
    prov = provenance()   # the same record as results.json / pareto.json
    meta = {
        "format": FORMAT, "evonas_jax_version": prov["packages"]["evonas_jax"],
        "jax_version": prov["packages"]["jax"], "provenance": prov,
        "task": task.name, "output": task.output,
        "space": space_to_dict(src.space), "arch": arch.to_dict(),
        "genome": genome.tolist(), "arch_short": arch.short(),
        "num_classes": int(info.num_classes), "class_names": list(info.class_names),
        "image_shape": list(image_shape), "dataset": info.name,
        # Images must be preprocessed the way the supernet saw them: (pixel in [0,1] - mean) / std.
        "normalization": ({"mean": _as_list(ds.mean), "std": _as_list(ds.std),
                           "image_size": int(ds.image_size), "channels": int(ds.channels)}
                          if not dense else
                          {"mean": _as_list(ds.mean), "std": _as_list(ds.std),
                           "crop_size": _as_list(ds.crop_size), "channels": 3}),
        "head_cfg": dict(task_cfg.get("head_cfg") or {}) if dense else None,
        "max_depth": task_cfg.get("max_depth"),
        "objectives": ({k: v for k, v in row.items() if k not in ("genome", "arch")}
                       if row is not None else None),
        "pareto_row": row_idx,
        "source": {"kind": src.kind, "workdir": src.workdir,
                   "supernet_workdir": src.supernet_workdir,
                   "supernet_checkpoint": (os.path.join(src.supernet_workdir, "final")
                                           if src.supernet_workdir else None)},
        "bn_recalibration": {"batches": n_calib, "batch_size": src.calib["batch_size"],
                             "seed": src.calib["seed"], "split": "train (augmented)"},
        "cost": {"macs": int(cost.macs), "params": int(cost.params),
                 "stored_params": int(sum(v.size for k, v in flat.items()
                                          if k.startswith("params/")))},
        "files": {"params_orbax": "params", "params_npz": "params.npz"},
        "artifacts": artifacts,
    }
    with open(os.path.join(tmp, "arch.json"), "w") as f:
      f.write(_dumps(meta))
    if os.path.exists(out):   # overwrite=True: the new folder is complete; swap it in
      shutil.rmtree(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  meta["seconds"] = time.time() - t0
  return ExportResult(out, meta, sliced)


def _dumps(obj) -> str:
  """Indented JSON with lists of numbers on one line (genomes, depth bits stay readable)."""
  import re
  text = json.dumps(obj, indent=1)
  return re.sub(r"\[[-+\d.eE,\s]+\]", lambda m: "[" + ", ".join(
      x.strip() for x in m.group(0)[1:-1].split(",")) + "]", text) + "\n"


def _as_list(v) -> list[float]:
  return [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]


def print_summary(res: ExportResult, log=print) -> None:
  m = res.meta
  log(f"\nexported {m['task']} subnet ({m['space']['name']}/{m['space']['preset']}) to {res.out}")
  log(f"  arch    {m['arch_short']}")
  log(f"  genome  {','.join(map(str, m['genome']))}")
  log(f"  params  {m['cost']['params'] / 1e6:.4f} M (stored {m['cost']['stored_params']}), "
      f"MACs {m['cost']['macs'] / 1e6:.2f} M at {tuple(m['image_shape'])}")
  if m["objectives"]:
    o = m["objectives"]
    log("  search  " + ", ".join(f"{k} {o[k]:.4g}" for k in ("accuracy", "latency_ms", "macs")
                                 if k in o))
  npz = os.path.getsize(os.path.join(res.out, "params.npz"))
  log(f"  files   params.npz {npz / 1e3:.1f} KB, params/ (orbax), arch.json")
  for p, a in m["artifacts"].items():
    if p == "onnx":
      worst = max(v["max_abs_diff"] for v in a["check"]["outputs"].values())
      log(f"          {a['file']} {a['bytes'] / 1e3:.1f} KB (opset {a['opset']}, {a['nodes']} "
          f"nodes, batch B; onnxruntime vs JAX max |diff| {worst:.2g} on "
          f"{a['check']['images']} images)")
      continue
    if p == "int8":
      from evonas_jax.export_int8 import summary_line
      log(f"          {summary_line(a)}")
      continue
    log(f"          {a['file']} {a['bytes'] / 1e3:.1f} KB (platforms {a['platforms']}, "
        f"scan {a['scan_backend']}, batch {a['batch']})")
  bn = m["bn_recalibration"]
  log("  BN      " + (f"recalibrated for this subnet on {bn['batches']} train batches of "
                      f"{bn['batch_size']}" if bn["batches"] else
                      "NOT recalibrated (the supernet's shared statistics)"))
  log(f"  time    {m.get('seconds', 0):.1f} s")


# --------------------------------------------------------------------------- loading back
def load_export(path: str):
  """(module, variables, meta) of an export folder, from its orbax params.

  module is the task's standalone network (reference scan), ready for
  `module.apply(variables, images)`.
  """
  from evonas_jax.checkpoint import load_pytree
  meta = _read_json(os.path.join(path, "arch.json"))
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}/arch.json has format {meta.get('format')!r}; expected {FORMAT!r}")
  space = space_from_dict(meta["space"])
  task = build_task({"task": meta["task"], "head_cfg": meta.get("head_cfg") or {},
                    "max_depth": meta.get("max_depth") or 10.0}, space, meta["num_classes"])
  arch = Arch.from_dict(meta["arch"])
  variables = load_pytree(os.path.join(path, "params"))
  return task.make_module(arch, "reference"), variables, meta
