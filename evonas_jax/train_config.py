"""Validation of training configs: every bad field fails early, naming the field and what is allowed."""
from __future__ import annotations

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


def _need(cond: bool, field: str, allowed: str, got) -> None:
  if not cond:
    raise ValueError(f"config.{field} = {got!r} is not allowed: {allowed}")


def _pos_int(c, field: str, minimum: int = 1) -> None:
  v = c
  for part in field.split("."):
    v = v[part]
  _need(isinstance(v, int) and not isinstance(v, bool) and v >= minimum, field,
        f"an integer >= {minimum}", v)


def _nonneg(c, field: str) -> None:
  v = c
  for part in field.split("."):
    v = v[part]
  _need(isinstance(v, (int, float)) and v >= 0, field, "a number >= 0", v)


def validate_train_config(c) -> None:
  """Raises ValueError naming the first bad field of a `train` config."""
  from evonas_jax.task_runtime import TASK_NAMES
  _need(c.get("task", "classification") in TASK_NAMES, "task", f"one of {TASK_NAMES}",
        c.get("task"))
  _need(c.space in SPACES, "space", f"one of {SPACES}", c.space)
  _need(isinstance(c.get("depth_flip_tta", False), bool), "depth_flip_tta", "True or False",
        c.get("depth_flip_tta"))
  _need(c.preset in PRESETS, "preset", f"one of {PRESETS}", c.preset)
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
    _need(bool(c.teacher.checkpoint), "teacher.checkpoint",
          "a checkpoint path (a teacher workdir's teacher/final) when teacher.source='checkpoint'",
          c.teacher.checkpoint)
  if c.teacher.source == "store":
    _need(bool(c.teacher.store), "teacher.store",
          "a teacher-store directory (evonas_jax.teacher_store) when teacher.source='store'",
          c.teacher.store)
  d = c.distill
  for f in ("distill.kd_ratio", "distill.alpha_spatial", "distill.alpha_frequency",
            "sampling.inplace_kd_ratio"):
    _nonneg(c, f)
  _need(d.kd_ratio <= 1, "distill.kd_ratio", "a number in [0, 1] (λ)", d.kd_ratio)
  _need(d.temperature > 0, "distill.temperature", "a number > 0", d.temperature)
  _need(d.reduction in REDUCTIONS, "distill.reduction", f"one of {REDUCTIONS}", d.reduction)
  _need(d.student_stage in (-4, -3, -2, -1, 0, 1, 2, 3), "distill.student_stage",
        "a stage index in -4..3", d.student_stage)
  _need(c.sampling.rule in SAMPLING_RULES, "sampling.rule", f"one of {SAMPLING_RULES}",
        c.sampling.rule)
  _pos_int(c, "pst.k_max")
  fixed = tuple(c.get("fixed_subnet", ()))
  if fixed:
    from evonas_jax.space import get_space
    try:
      get_space(c.space, c.preset).validate(list(fixed))
    except ValueError as e:
      raise ValueError(f"config.fixed_subnet = {list(fixed)} is not a genome of "
                       f"{c.space}/{c.preset}: {e}") from None
  names = [s[0] for s in OFFICIAL_STAGES]
  bad = [s for s in c.pst.stages if s not in names]
  _need(not bad, "pst.stages", f"a subset (in order) of {names}", list(c.pst.stages))
  _need(c.parallel.data_sharding in DATA_SHARDING_MODES, "parallel.data_sharding",
        f"one of {DATA_SHARDING_MODES}", c.parallel.data_sharding)
  _pos_int(c, "parallel.num_devices", 0)
  for f in ("optimizer.lr", "optimizer.weight_decay", "optimizer.grad_clip",
            "teacher.optimizer.lr"):
    _nonneg(c, f)


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
