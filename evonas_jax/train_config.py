"""Validation of training configs: every bad field fails early, naming the field and what is allowed."""
from __future__ import annotations

import math
import os
import re
import sys

from evonas_jax import evaluate
from evonas_jax.parallel import DATA_SHARDING_MODES
from evonas_jax.pst import OFFICIAL_STAGES, SAMPLING_RULES
from evonas_jax.steps import COMPUTE_DTYPES

SPACES = ("evonas", "hybrid")
PRESETS = ("tiny", "small", "base")
TEACHER_SOURCES = ("train", "checkpoint", "store", "none")
REDUCTIONS = ("sum", "mean")


# Supernet execution engines (evonas_jax.engine): "compiled" (default) and the masked reference.
ENGINES = ("compiled", "masked")
DEFAULT_ENGINE = "compiled"


def engine_of(config) -> str:
  """The supernet engine a config asks for (configs saved before the field existed: default)."""
  return config.get("engine", DEFAULT_ENGINE)


# Integer fields end up in numpy / XLA int32 arithmetic (steps, batch sizes, seeds): larger values
# overflow deep inside jax instead of failing here.
INT_MAX = 2 ** 31 - 1


def _need(cond: bool, field: str, allowed: str, got) -> None:
  if not cond:
    raise ValueError(f"config.{field} = {got!r} is not allowed: {allowed}")


def _get(c, field: str):
  v = c
  for part in field.split("."):
    v = v[part]
  return v


def _pos_int(c, field: str, minimum: int = 1, maximum: int = INT_MAX) -> None:
  v = _get(c, field)
  _need(isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= maximum, field,
        f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum < INT_MAX else
                                       f" (at most {INT_MAX})"), v)


def _number(c, field: str, lo: float = 0.0, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> None:
  """A finite real (not a bool) in the interval; NaN and inf are refused (NaN >= 0 is False,
  so `v >= 0` alone let NaN through some checks and inf through all)."""
  v = _get(c, field)
  ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
  ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
  left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
  allowed = (f"a finite number {'>' if lo_open else '>='} {lo:g}" if hi is None else
             f"a number in {left}{lo:g}, {hi:g}{right}")
  _need(ok, field, allowed, v)


def _nonneg(c, field: str) -> None:
  _number(c, field, 0.0)


def _bool(c, field: str, default=None) -> None:
  v = c.get(field, default) if "." not in field else _get(c, field)
  _need(isinstance(v, bool), field, "True or False", v)


def _existing_dir(c, field: str, what: str) -> None:
  v = _get(c, field)
  _need(isinstance(v, str) and bool(v), field, what, v)
  if not os.path.isdir(os.path.expanduser(v)):
    raise ValueError(f"config.{field} = {v!r} is not allowed: {what}; no such directory")


def validate_data_config(data_cfg, *, task: str = "classification", field: str = "data") -> None:
  """The data config of a run, checked before the workdir is touched: every field
  (`data.config.validate`, or `data.dense.validate` for dense tasks), the prepared TFDS dataset
  of source="tfds", and for local sources that the files exist (unless data.allow_fallback)
  and that data.val_size leaves training examples. Raises ValueError / FileNotFoundError
  naming the field (a failure here used to come after config.json was written)."""
  if task != "classification":
    from evonas_jax.data import dense
    try:
      dense.validate(data_cfg)
    except (ValueError, TypeError, KeyError) as e:
      raise ValueError(f"config.task = {task!r} needs a dense data config "
                       f"(evonas_jax.data.dense.dense_config_defaults; configs/dense_*.py) in "
                       f"config.{field}: {e}") from None
    return
  from evonas_jax.data import config as data_config
  from evonas_jax.data import idx as idx_lib
  from evonas_jax.data import sources, splits
  spec = data_config.validate(data_cfg)
  if spec.source == "tfds":
    base = spec.name.split("/")[0].split(":")[0]
    if not os.path.isdir(os.path.join(spec.tfds_data_dir, base)):
      raise FileNotFoundError(
          f"config.{field}.name = {spec.name!r}: TFDS dataset not prepared in "
          f"config.{field}.tfds_data_dir = {spec.tfds_data_dir!r} (no {base}/ there)")
    return
  n_train = sources.DIGITS_TRAIN_SIZE
  if spec.source == "fashion_mnist":
    missing = sources.fashion_mnist_missing_files(spec.data_dir)
    if missing and not spec.allow_fallback:
      raise FileNotFoundError(
          f"config.{field}.data_dir = {spec.data_dir!r}: Fashion-MNIST files missing "
          f"({', '.join(missing)}) and config.{field}.allow_fallback = False")
    if missing:
      return   # the digits fallback adapts val_size itself (data.api)
    train_labels = os.path.join(spec.data_dir or sources.FASHION_MNIST_DEFAULT_DIR,
                                sources.FASHION_MNIST_FILES["train"][1])
    n_train = len(idx_lib.read_idx(train_labels))
  splits.resolve_holdout_size(spec.val_size, n_train, field=f"config.{field}.val_size")


def check_workdir(workdir, flag: str = "--workdir") -> str:
  """Checks a run directory before any heavy work (what `workdir.open_workdir` will create or
  re-open): raises ValueError / NotADirectoryError / PermissionError naming the flag and the
  path for a missing value, a file in its place (or above it), an unwritable directory, or a
  config.json / results.json that is not readable JSON. Writes nothing; returns the abspath."""
  import json
  if not isinstance(workdir, str) or not workdir.strip():
    raise ValueError(f"{flag} is required: a run directory (new, or one to resume)")
  path = os.path.abspath(os.path.expanduser(workdir))
  probe = path
  while not os.path.exists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise NotADirectoryError(f"{flag} {workdir}: {probe} is a file, not a directory")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise PermissionError(f"{flag} {workdir}: {probe} is not writable")
  if probe == path:
    for name in ("config.json", "results.json"):
      f = os.path.join(path, name)
      if os.path.lexists(f):
        try:
          with open(f) as fh:
            data = json.load(fh)
        except (OSError, ValueError) as e:
          raise ValueError(f"{flag} {workdir}: {f} is not readable JSON ({type(e).__name__}: "
                           f"{e}); it is not a run directory this tool wrote. Use a new {flag}, "
                           "or delete that directory yourself.") from None
        if not isinstance(data, dict):
          raise ValueError(f"{flag} {workdir}: {f} holds a {type(data).__name__}, not a JSON "
                           f"object; use a new {flag}")
  return path


def config_flags_parser(argv, flag_values=None):
  """`app.run(main, flags_parser=config_flags_parser)`: absl's flag parsing, with an unknown
  --config.<field> reported as a one-line usage error naming the field (ml_collections raises
  an AttributeError from deep inside config_flags, which app.run shows as a traceback)."""
  from absl import flags
  fv = flags.FLAGS if flag_values is None else flag_values
  try:
    return fv(argv)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)
  except ValueError as e:   # ml_collections: an override path it cannot parse (--config.if=1)
    given = [a.split("=", 1)[0] for a in argv[1:] if re.match(r"--?(no)?config\.", a)]
    sys.stderr.write(f"FATAL Flags parsing error: {', '.join(given) or '--config'}: {e}\n")
    sys.exit(1)
  except (AttributeError, KeyError) as e:
    key = str(e).strip("\"'")
    given = [a.split("=", 1)[0] for a in argv[1:] if re.match(r"--?(no)?config\.", a)]
    bad = [g for g in given if re.search(r"(^|\.)" + re.escape(key) + r"($|\.)", g)] or given
    sys.stderr.write(f"FATAL Flags parsing error: {', '.join(bad)}: the config has no field "
                     f"{key!r} (new fields cannot be added on the command line; check the "
                     "spelling against the config file)\n")
    sys.exit(1)


def validate_train_config(c) -> None:
  """Raises ValueError naming the first bad field of a `train` config."""
  from evonas_jax.task_runtime import TASK_NAMES
  _need(c.get("task", "classification") in TASK_NAMES, "task", f"one of {TASK_NAMES}",
        c.get("task"))
  _need(c.space in SPACES, "space", f"one of {SPACES}", c.space)
  _need(isinstance(c.get("depth_flip_tta", False), bool), "depth_flip_tta", "True or False",
        c.get("depth_flip_tta"))
  _need(c.preset in PRESETS, "preset", f"one of {PRESETS}", c.preset)
  _pos_int(c, "seed", 0)
  for f in ("batch_size", "eval_batch_size", "num_steps", "log_every", "eval_every",
            "checkpoint_every", "keep_checkpoints", "teacher.num_steps", "teacher.eval_every"):
    _pos_int(c, f)
  _pos_int(c, "bn_calibration_batches", 0)
  if "bn_calibration_batch_size" in c:
    _pos_int(c, "bn_calibration_batch_size", 1)
  _need(engine_of(c) in ENGINES, "engine", f"one of {ENGINES}", c.get("engine"))
  _need(isinstance(c.get("compile_cache_dir", ""), str), "compile_cache_dir",
        "a directory path, '' (the default per-user cache) or 'none'", c.get("compile_cache_dir"))
  _need(isinstance(c.get("tensorboard", True), bool), "tensorboard", "True or False",
        c.get("tensorboard"))
  _need(c.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"one of {COMPUTE_DTYPES}",
        c.compute_dtype)
  _need(c.teacher.source in TEACHER_SOURCES, "teacher.source", f"one of {TEACHER_SOURCES}",
        c.teacher.source)
  if c.teacher.source == "checkpoint":
    _existing_dir(c, "teacher.checkpoint", "a checkpoint path (a teacher workdir's teacher/final) "
                  "when teacher.source='checkpoint'")
  if c.teacher.source == "store":
    _existing_dir(c, "teacher.store", "a teacher-store directory (evonas_jax.teacher_store) when "
                  "teacher.source='store'")
  if c.teacher.source in ("train", "checkpoint"):
    # The teacher's own checks (nn.teacher), here instead of after the workdir is opened.
    from evonas_jax.nn.teacher import teacher_from_config
    for f in ("teacher.model.dim", "teacher.model.heads", "teacher.model.patch_size"):
      if f.rsplit(".", 1)[1] in c.teacher.model:
        _pos_int(c, f)
    if "depth" in c.teacher.model:   # a ViT deeper than this is a typo, not a teacher
      _pos_int(c, "teacher.model.depth", 1, 4096)
    if "mlp_ratio" in c.teacher.model:
      _number(c, "teacher.model.mlp_ratio", 0.0, lo_open=True)
    try:
      teacher_from_config(c.teacher.model, 1)
    except (ValueError, TypeError) as e:
      raise ValueError(f"config.teacher.model: {e}") from None
    ps, size = c.teacher.model.get("patch_size"), c.data.get("image_size")
    if isinstance(size, int) and isinstance(ps, int) and ps > size:
      raise ValueError(f"config.teacher.model.patch_size = {ps} is not allowed: at most "
                       f"config.data.image_size = {size} (the teacher would see no patch)")
    _pos_int(c, "teacher.optimizer.warmup_steps", 0)
    for f in ("teacher.optimizer.weight_decay", "teacher.optimizer.grad_clip"):
      _nonneg(c, f)
    _number(c, "teacher.optimizer.final_lr_fraction", 0.0, 1.0)
  if c.teacher.source != "none":
    p = c.distill.projector
    if "num_heads" in p:
      _pos_int(c, "distill.projector.num_heads")
    if "ffn_ratio" in p:
      _pos_int(c, "distill.projector.ffn_ratio")
    if "softmax_scale" in p:
      _number(c, "distill.projector.softmax_scale", 0.0, lo_open=True)
  d = c.distill
  for f in ("distill.kd_ratio", "distill.alpha_spatial", "distill.alpha_frequency",
            "sampling.inplace_kd_ratio"):
    _nonneg(c, f)
  _need(d.kd_ratio <= 1, "distill.kd_ratio", "a number in [0, 1] (λ)", d.kd_ratio)
  _number(c, "distill.temperature", 0.0, lo_open=True)
  _number(c, "sampling.inplace_kd_ratio", 0.0, 1.0)
  _bool(c, "sampling.inplace_kd")
  _need(d.reduction in REDUCTIONS, "distill.reduction", f"one of {REDUCTIONS}", d.reduction)
  _need(d.student_stage in (-4, -3, -2, -1, 0, 1, 2, 3), "distill.student_stage",
        "a stage index in -4..3", d.student_stage)
  _need(c.sampling.rule in SAMPLING_RULES, "sampling.rule", f"one of {SAMPLING_RULES}",
        c.sampling.rule)
  _pos_int(c, "pst.k_max")
  _pos_int(c, "pst.k_final", 0)
  _bool(c, "pst.enabled")
  fixed = c.get("fixed_subnet", ())
  _need(isinstance(fixed, (tuple, list)), "fixed_subnet",
        "() or a genome: a tuple of gene indices", fixed)
  fixed = tuple(fixed)
  if fixed:
    from evonas_jax.space import get_space
    try:
      get_space(c.space, c.preset).validate(list(fixed))
    except ValueError as e:
      raise ValueError(f"config.fixed_subnet = {list(fixed)} is not a genome of "
                       f"{c.space}/{c.preset}: {e}") from None
  names = [s[0] for s in OFFICIAL_STAGES]
  stages = c.pst.stages
  _need(isinstance(stages, (tuple, list)), "pst.stages", f"a subset (in order) of {names}", stages)
  bad = [s for s in stages if s not in names]
  _need(not bad, "pst.stages", f"a subset (in order) of {names}", list(stages))
  order = [names.index(s) for s in stages]
  _need(order == sorted(order), "pst.stages", f"a subset in the official order {names}",
        list(stages))
  _need(c.parallel.data_sharding in DATA_SHARDING_MODES, "parallel.data_sharding",
        f"one of {DATA_SHARDING_MODES}", c.parallel.data_sharding)
  _pos_int(c, "parallel.num_devices", 0)
  for f in ("optimizer.lr", "optimizer.weight_decay", "optimizer.grad_clip",
            "teacher.optimizer.lr"):
    _nonneg(c, f)
  o = c.optimizer
  if "warmup_steps" in o:
    _pos_int(c, "optimizer.warmup_steps", 0)
  if "final_lr_fraction" in o:
    _number(c, "optimizer.final_lr_fraction", 0.0, 1.0)
  if "eps" in o:
    _number(c, "optimizer.eps", 0.0, lo_open=True)
  if "restart_per_stage" in o:
    _bool(c, "optimizer.restart_per_stage")
  if "drop_path_rate" in c:
    _number(c, "drop_path_rate", 0.0, 1.0, hi_open=True)
  if "aux_weight" in c:
    _nonneg(c, "aux_weight")
  init_from = c.get("init_from", "")
  _need(isinstance(init_from, str), "init_from", "'' or a supernet workdir / checkpoint folder",
        init_from)
  if init_from and not os.path.isdir(os.path.expanduser(init_from)):
    raise ValueError(f"config.init_from = {init_from!r} is not allowed: '' or a supernet workdir / "
                     "checkpoint folder; no such directory")
  # Last: the data (files, prepared datasets) after every cheap field check.
  validate_data_config(c.data, task=c.get("task", "classification"))


def default_config():
  """Every field of a `train` config with its default (configs/*.py start from this)."""
  import ml_collections

  from evonas_jax import data
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.space = "evonas"            # "evonas" (official 28 genes) | "hybrid" (+ block-type genes)
  c.preset = "tiny"             # widths: "tiny" 16/32/64/128, "small", "base" (official)
  # "classification" (config.data: evonas_jax.data) | "depth" | "segmentation" (config.data:
  # evonas_jax.data.dense.dense_config_defaults(name); configs/dense_*.py)
  c.task = "classification"
  c.head_cfg = ml_collections.ConfigDict()   # dense heads: DenseEvoNet head_cfg (widths, ...)
  c.aux_weight = 0.4                         # segmentation: weight of the auxiliary FCN loss
  # Depth: evaluate with flip test-time augmentation (the prediction and its mirror's, blended
  # with the official edge ramp: `tasks.flip_tta_blend`). Off here (training-time evaluation
  # picks checkpoints; the search's own evaluator.depth_flip_tta defaults to on, as official).
  c.depth_flip_tta = False
  c.data = data.get_config_defaults()
  c.batch_size = 128            # global batch (divided over the data mesh)
  c.eval_batch_size = 500
  c.num_steps = 600             # supernet steps (all PST stages together)
  c.drop_path_rate = 0.0
  c.compute_dtype = "float32"   # "bfloat16": bf16 compute with fp32 master params
  # Supernet execution: "compiled" (default) runs each sampled subnet at its own widths
  # (per-piece compiled programs, evonas_jax.engine; tested equal to masked per step and in
  # end-to-end runs; 1.3-5x faster per step on CPU); "masked" runs the full-width supernet
  # with masks (the reference: one program for every subnet, but every subnet costs more than
  # the largest). Checkpoints are the same for both, so a run may resume on the other.
  c.engine = DEFAULT_ENGINE
  # Persistent XLA compilation cache: '' = the per-user default (~/.cache/evonas_jax/xla or
  # $EVONAS_JAX_COMPILE_CACHE), 'none' = off, or a directory. A second run compiles nothing.
  c.compile_cache_dir = ""
  # TensorBoard scalars beside metrics.jsonl (<workdir>/tensorboard/{supernet,teacher}); a write
  # error is a warning, never a failed run.
  c.tensorboard = True
  # A supernet workdir or checkpoint to start from: the student from its final/ (or the
  # checkpoint itself); with a workdir, the CA-DDKD projectors from its last train checkpoint
  # too, when they fit (the official retrain continues from the final PST checkpoint).
  c.init_from = ""
  # () trains the supernet (PST sampling). A genome (gene indices) trains that one subnet at its
  # own widths, every step, no PST and no in-place KD: the "OFA retrain" `evonas_jax.finetune`
  # runs. Evaluation and results then report this subnet ("subnet"), before and after.
  c.fixed_subnet = ()
  c.log_every = 50
  c.eval_every = 300
  c.checkpoint_every = 100
  c.keep_checkpoints = 2
  # Per-subnet BatchNorm recalibration before each evaluation (exact statistics over
  # batches x batch_size augmented train images, `evonas_jax.evaluate.bn`): the same default
  # calibration set as the search fitness and export.
  c.bn_calibration_batches = evaluate.DEFAULT_CALIB_BATCHES
  c.bn_calibration_batch_size = evaluate.DEFAULT_CALIB_BATCH_SIZE

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 100
  c.optimizer.final_lr_fraction = 0.01
  c.optimizer.grad_clip = 1.0
  c.optimizer.eps = 1e-8                  # Adam's epsilon
  c.optimizer.restart_per_stage = False   # official: the cosine restarts at every PST stage

  c.teacher = ml_collections.ConfigDict()
  c.teacher.source = "train"    # "train" (stage 1 of this run) | "checkpoint" | "store" | "none"
  c.teacher.checkpoint = ""     # for source="checkpoint": a <teacher workdir>/teacher/final
  c.teacher.store = ""          # for source="store": precomputed features (evonas_jax.teacher_store)
  c.teacher.num_steps = 300
  c.teacher.eval_every = 300
  c.teacher.model = ml_collections.ConfigDict(dict(
      patch_size=4, dim=96, depth=4, heads=3, mlp_ratio=4.0, feature_layer=-1))
  c.teacher.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-3, weight_decay=0.05, warmup_steps=50, final_lr_fraction=0.01, grad_clip=1.0))

  c.distill = ml_collections.ConfigDict()
  c.distill.kd_ratio = 0.5      # λ: (1-λ)·CE + λ·KL(teacher || student)
  c.distill.temperature = 1.0
  c.distill.alpha_spatial = 0.08     # α1 (official depth weight; sum reduction)
  c.distill.alpha_frequency = 0.06   # α2
  c.distill.reduction = "sum"        # "sum" over C·H·W / N (depth, seg) | "mean" (detection)
  c.distill.student_stage = -1       # distil the last stage's feature (official)
  c.distill.projector = ml_collections.ConfigDict(dict(num_heads=4, softmax_scale=5.0,
                                                       ffn_ratio=4))

  c.sampling = ml_collections.ConfigDict()
  c.sampling.rule = "uniform"        # "uniform" (official) | "sandwich" (largest+smallest+random)
  c.sampling.inplace_kd = True       # sandwich: KD of the other subnets from the largest
  c.sampling.inplace_kd_ratio = 0.5

  c.pst = ml_collections.ConfigDict()
  c.pst.enabled = True               # False: every choice open from step 0 ("random" baseline)
  c.pst.stages = ()                  # () = the official 8 stages; or a subset, in order
  c.pst.k_max = 2                    # cap on subnets/step (official k reaches 4)
  c.pst.k_final = 0                  # k when pst.enabled=False (0 = k_max)

  c.parallel = ml_collections.ConfigDict()
  c.parallel.num_devices = 0         # 0 = every visible device (all hosts)
  c.parallel.data_sharding = "per_host"   # | "global_slice" (every host reads the global batch)
  return c
