"""Fine-tune ("OFA retrain") one searched subnet from its supernet weights.

    finetune(ft_config, workdir) -> results dict (also <workdir>/results.json)

The official pipeline's last stage keeps the supernet module, fixes the chosen subnet, loads the
final PST checkpoint and trains on with the same task and KD losses and a short schedule of its
own. Here that is the ordinary training job (`evonas_jax.trainer.train_and_evaluate`) with the
supernet's own config and three changes:

  * `fixed_subnet` = the chosen genome: every step trains that subnet alone, at its own widths
    (the compiled engine slices the supernet's weights; the other weights get no gradient), with
    no PST stages and no in-place KD;
  * `init_from` = the supernet workdir: the student from its final/, the CA-DDKD projectors from
    its last train checkpoint, the teacher from its teacher/final (a "checkpoint" teacher), so
    the output KD and the spatial/frequency feature losses continue where the supernet left off;
  * the schedule, optimizer and batch of the fine-tuning config.

So resume, metrics.jsonl, TensorBoard, NaN stops and the results summary are the trainer's. The
workdir's final/ holds supernet-shaped variables in which only this subnet's slice was trained;
config.json names the subnet (`fixed_subnet`), so `python -m evonas_jax.export --workdir W`
exports it without --select. results.json reports the subnet's validation metric before
(the supernet's weights, exact BatchNorm statistics) and after.

`source` is a search workdir (pareto.json; `select` is a row, a genome or a budget such as
"latency_ms<=2.5"), an export folder (arch.json: its subnet; `select` must be empty) or a
training workdir (`select` a genome).
"""
from __future__ import annotations

import json
import math
import os

import ml_collections
import numpy as np

from evonas_jax import export_lib

# Fields of a fine-tuning config (configs/finetune_*.py) copied onto the training config when set.
_OPTIMIZER_FIELDS = ("lr", "weight_decay", "warmup_steps", "final_lr_fraction", "grad_clip")


def default_config() -> ml_collections.ConfigDict:
  """Every field of a `finetune` config with its default."""
  c = ml_collections.ConfigDict()
  c.source = ""          # search workdir | export folder | training workdir (see the module doc)
  c.select = ""          # pareto row ("3"), genome ("0,1,..."), budget ("latency_ms<=2.5")
  c.seed = 0
  c.num_steps = 300
  c.batch_size = 0       # 0 = the supernet run's global batch
  c.log_every = 25
  c.eval_every = 100
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  c.kd_ratio = -1.0      # λ of the output KD; < 0 keeps the supernet run's
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=5e-4, weight_decay=0.05, warmup_steps=20, final_lr_fraction=0.01, grad_clip=1.0))
  c.compile_cache_dir = ""
  c.tensorboard = True
  return c


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def resolve_source(source: str, select) -> tuple[str, np.ndarray, dict]:
  """(supernet workdir, genome (G,) int32, description) of the subnet to fine-tune."""
  if not source:
    raise ValueError("config.source is empty: give a search workdir (pareto.json), an export "
                     "folder (arch.json) or a training workdir")
  source = os.path.abspath(os.path.expanduser(source))
  arch_json = os.path.join(source, "arch.json")
  if os.path.isfile(arch_json):
    meta = _read_json(arch_json)
    if select not in (None, ""):
      raise ValueError(f"config.select = {select!r}: the export folder {source} holds one subnet "
                       "(its arch.json genome); allowed: select = '' with an export folder")
    sup = (meta.get("source") or {}).get("supernet_workdir")
    if not sup:
      raise ValueError(f"the export folder {source} was made from a random supernet (no "
                       "supernet_workdir in arch.json): there are no trained weights to fine-tune")
    space = export_lib.space_from_dict(meta["space"])
    genome = space.validate(meta["genome"])
    return sup, genome, {"kind": "export", "path": source, "pareto_row": meta.get("pareto_row"),
                         "objectives": meta.get("objectives")}
  src = export_lib.open_source(source)
  if not src.supernet_workdir:
    raise ValueError(f"the search {source} ran on a random supernet (no supernet_workdir): "
                     "there are no trained weights to fine-tune")
  _, genome, row, idx, _ = export_lib.select_subnet(src, select if select != "" else None)
  return src.supernet_workdir, genome, {
      "kind": src.kind, "path": src.workdir, "select": select, "pareto_row": idx,
      "objectives": ({k: v for k, v in row.items() if k not in ("genome", "arch")}
                     if row is not None else None)}


def _merge(dst: ml_collections.ConfigDict, src: dict) -> None:
  """Recursively writes a saved config (JSON: lists) over defaults (tuples stay tuples)."""
  for k, v in src.items():
    if k in dst and isinstance(dst[k], ml_collections.ConfigDict) and isinstance(v, dict):
      _merge(dst[k], v)
    elif k in dst and isinstance(dst[k], tuple) and isinstance(v, list):
      dst[k] = tuple(v)
    else:
      with dst.unlocked():
        dst[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v


def train_config(ft: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `train` config that fine-tunes `ft.select` of `ft.source` (see the module doc)."""
  from evonas_jax.train_config import default_config as train_defaults
  sup, genome, desc = resolve_source(ft.source, ft.select)
  saved = _read_json(os.path.join(sup, "config.json"))
  c = train_defaults()
  _merge(c, {k: v for k, v in saved.items() if k not in ("data", "finetune")})
  # The data config by the export's rule (classification or dense defaults + the saved fields).
  c.data = export_lib._data_cfg(saved["data"])
  c.fixed_subnet = tuple(int(g) for g in genome)
  c.init_from = sup
  c.seed = int(ft.seed)
  for f in ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    c[f] = int(ft[f])
  if ft.batch_size:
    c.batch_size = int(ft.batch_size)
  for f in _OPTIMIZER_FIELDS:
    c.optimizer[f] = ft.optimizer[f]
  c.optimizer.restart_per_stage = False
  c.pst.enabled, c.pst.stages, c.sampling.rule = False, (), "uniform"
  if c.teacher.source == "train":
    final = os.path.join(sup, "teacher", "final")
    if not os.path.isdir(final):
      raise FileNotFoundError(f"the supernet run {sup} trained its teacher but {final} is "
                              "missing: fine-tuning needs the same teacher for its KD terms")
    c.teacher.source, c.teacher.checkpoint = "checkpoint", final
  if ft.kd_ratio >= 0:
    c.distill.kd_ratio = float(ft.kd_ratio)
  c.compile_cache_dir, c.tensorboard = ft.compile_cache_dir, bool(ft.tensorboard)
  with c.unlocked():
    # Provenance only (the trainer ignores it): where the subnet came from.
    c.finetune = ml_collections.ConfigDict({"supernet_workdir": sup, **{
        k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in desc.items()
        if v is not None}})
  return c


def validate(ft: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field of a `finetune` config."""
  def need(cond, field, allowed):
    if not cond:
      raise ValueError(f"config.{field} = {ft[field]!r} is not allowed: {allowed}")
  def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)

  def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

  for f in ("num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    need(is_int(ft[f]) and ft[f] >= 1, f, "an integer >= 1")
  need(is_int(ft.batch_size) and ft.batch_size >= 0, "batch_size",
       "an integer >= 0 (0 = the supernet run's batch)")
  if "kd_ratio" in ft:
    need(is_num(ft.kd_ratio) and ft.kd_ratio <= 1, "kd_ratio",
         "a finite number <= 1 (< 0 keeps the supernet run's λ, else a λ in [0, 1])")
  for f in _OPTIMIZER_FIELDS:
    v = ft.optimizer[f]
    if not (is_num(v) and v >= 0):
      raise ValueError(f"config.optimizer.{f} = {v!r} is not allowed: a finite number >= 0")


def finetune(ft: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes the selected subnet in `workdir` (rerun the same command to resume)."""
  validate(ft)
  from evonas_jax.trainer import train_and_evaluate
  cfg = train_config(ft)
  print(f"[evonas_jax] fine-tuning genome {list(cfg.fixed_subnet)} from {cfg.init_from} "
        f"({cfg.num_steps} steps, lr {cfg.optimizer.lr}, batch {cfg.batch_size})", flush=True)
  results = train_and_evaluate(cfg, workdir)
  r = results["subnets"]["subnet"]
  m = results["metric"]
  if f"before_val_{m}" in r:
    print(f"[evonas_jax] val {m}: {r[f'before_val_{m}']:.4f} (supernet weights) -> "
          f"{r[f'val_{m}']:.4f} (fine-tuned)", flush=True)
  print(f"[evonas_jax] export it: python -m evonas_jax.export --workdir {os.path.abspath(workdir)}"
        " --formats jax_export,onnx", flush=True)
  return results
