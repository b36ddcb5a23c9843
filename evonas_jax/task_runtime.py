"""The task-dependent plumbing of a training or search run, chosen by `config.task`.

`make_runtime(config)` returns a `TaskRuntime` that hands the trainers and the search everything
that differs between classification and the dense tasks, so they stay written once:
the data (info, train/eval iterators), the student (EvoNet or DenseEvoNet with its head), the
teacher (ViT classifier or dense ViT), the loss/metric definitions (`evonas_jax.tasks`) and the
name of the validation metric.

  task              data config                       student          teacher
  classification    evonas_jax.data (Fashion-MNIST)   EvoNet           ViTTeacher
  depth             evonas_jax.data.dense             DenseEvoNet      DenseViTTeacher (depth)
  segmentation      evonas_jax.data.dense             DenseEvoNet      DenseViTTeacher (seg.)
"""
from __future__ import annotations

import dataclasses
from typing import Any

from evonas_jax import tasks as tasks_lib

TASK_NAMES = ("classification", "depth", "segmentation")
# Validation metric logged for the largest/smallest subnets, and whether higher is better.
VAL_METRIC = {"classification": ("accuracy", "acc"), "depth": ("abs_rel", "abs_rel"),
              "segmentation": ("miou", "miou")}


def hashable_head_cfg(cfg) -> tuple:
  """A head config dict as sorted (key, value) pairs: keeps DenseEvoNet hashable (compiled
  functions are memoised per module)."""
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (cfg or {}).items()))


@dataclasses.dataclass(frozen=True)
class DenseInfo:
  """What the trainers read from a dataset info, for a dense dataset."""
  name: str
  image_shape: tuple
  num_classes: int
  split_sizes: dict
  max_depth: float
  min_depth: float
  ignore_label: int
  eval_crop: str | None = None
  class_names: tuple = ()
  fallback_used: bool = False


@dataclasses.dataclass(frozen=True)
class TaskRuntime:
  name: str
  task: Any                 # evonas_jax.tasks object
  info: Any                 # data info: .name .image_shape .num_classes .split_sizes
  head_cfg: dict            # DenseEvoNet head config (dense tasks)

  @property
  def dense(self) -> bool:
    return self.name != "classification"

  @property
  def hashable_head_cfg(self) -> tuple:
    return hashable_head_cfg(self.head_cfg)

  @property
  def metric(self) -> str:
    """Key of the task's main validation metric in `task.finalize` (accuracy/abs_rel/miou)."""
    return VAL_METRIC[self.name][0]

  @property
  def metric_short(self) -> str:
    return VAL_METRIC[self.name][1]

  @property
  def target_shape(self) -> tuple:
    return ((self.info.num_classes,) if not self.dense
            else self.task.target_shape(self.info.image_shape))

  # ------------------------------------------------------------------ data
  def train_iterator(self, data_cfg, batch_size, seed, process_index=None, process_count=None,
                     return_index=False):
    if self.dense:
      from evonas_jax.data import dense
      return dense.dense_train_iterator(data_cfg, batch_size, seed, process_index=process_index,
                                        process_count=process_count, return_index=return_index)
    from evonas_jax import data as data_lib
    return data_lib.train_iterator(data_cfg, batch_size, seed=seed, process_index=process_index,
                                   process_count=process_count, return_index=return_index)

  def eval_iterator(self, data_cfg, split, batch_size):
    if self.dense:
      from evonas_jax.data import dense
      return dense.dense_eval_iterator(data_cfg, split, batch_size)
    from evonas_jax import data as data_lib
    return data_lib.eval_iterator(data_cfg, split, batch_size)

  def has_split(self, split: str) -> bool:
    return self.info.split_sizes.get(split, 0) > 0

  # ------------------------------------------------------------------ models
  def student(self, space, drop_path_rate: float = 0.0, bn_axis_name=None, spec=None):
    """The masked-mode supernet module (or the network of `spec`)."""
    from evonas_jax.nn.supernet import EvoNet, supernet_spec
    spec = spec or supernet_spec(space, drop_path_rate)
    if not self.dense:
      return EvoNet(spec, self.info.num_classes, bn_axis_name=bn_axis_name)
    from evonas_jax.nn.dense import DenseEvoNet
    # A tuple of pairs keeps the module hashable (compiled functions are memoised per module).
    return DenseEvoNet(spec, head=self.name, head_cfg=self.hashable_head_cfg,
                       num_classes=self.info.num_classes, max_depth=self.info.max_depth,
                       bn_axis_name=bn_axis_name)

  def init_student(self, space, rng, drop_path_rate: float = 0.0):
    """Supernet variables {"params", "batch_stats"}."""
    if not self.dense:
      from evonas_jax.nn import init_supernet
      return init_supernet(space, self.info.num_classes, rng, self.info.image_shape,
                           drop_path_rate=drop_path_rate)[1]
    from evonas_jax.nn.dense import init_dense_model
    return init_dense_model(space, self.name, self.hashable_head_cfg, self.info.num_classes,
                            self.info.max_depth, rng, self.info.image_shape,
                            drop_path_rate=drop_path_rate)[1]

  def teacher(self, model_cfg):
    if not self.dense:
      from evonas_jax.nn.teacher import teacher_from_config
      return teacher_from_config(model_cfg, self.info.num_classes)
    from evonas_jax.nn.teacher import dense_teacher_from_config
    return dense_teacher_from_config(model_cfg, self.name, self.info.num_classes,
                                     self.info.max_depth)


def make_runtime(config) -> TaskRuntime:
  """TaskRuntime of a train/search config (`config.task`, default "classification")."""
  name = config.get("task", "classification")
  if name not in TASK_NAMES:
    raise ValueError(f"config.task={name!r} is invalid; allowed: {TASK_NAMES}")
  if name == "classification":
    from evonas_jax import data as data_lib
    info = data_lib.dataset_info(config.data)
    return TaskRuntime(name, tasks_lib.get_task(name, num_classes=info.num_classes), info, {})
  from evonas_jax.data import dense
  if "crop_size" not in config.data:
    raise ValueError(f"config.task={name!r} needs a dense data config "
                     f"(evonas_jax.data.dense.dense_config_defaults(name)); config.data has no "
                     f"crop_size")
  d = dense.dense_dataset_info(config.data)
  if name == "segmentation" and d.task not in ("segmentation", "both"):
    raise ValueError(f"config.task='segmentation' but dataset {d.name!r} has task {d.task!r} "
                     f"(no labels); allowed datasets: those with segmentation labels")
  if name == "depth" and d.task not in ("depth", "both"):
    raise ValueError(f"config.task='depth' but dataset {d.name!r} has task {d.task!r} (no depth)")
  info = DenseInfo(name=d.name, image_shape=tuple(d.image_shape), num_classes=int(d.num_classes),
                   split_sizes=dict(d.split_sizes), max_depth=float(d.max_depth),
                   min_depth=float(d.min_depth), ignore_label=int(d.ignore_label),
                   eval_crop=None if d.eval_crop in (None, "none") else d.eval_crop,
                   class_names=tuple(getattr(d, "class_names", ()) or ()))
  head_cfg = dict(config.get("head_cfg", {}) or {})
  if name == "depth":
    flip_tta = config.get("depth_flip_tta", False)
    if not isinstance(flip_tta, bool):
      raise ValueError(f"config.depth_flip_tta={flip_tta!r} must be True or False (flip "
                       "test-time augmentation of the depth evaluation)")
    # The Garg crop is taken by the eval pipeline on the full-resolution frame (before the KB
    # crop, `DenseTransform.eval_example`): cropping the KB-cropped map by the same fractions
    # again would select other pixels, so the task gets no map-level crop for it.
    task = tasks_lib.get_task("depth", min_depth=info.min_depth, max_depth=info.max_depth,
                              eval_crop=None if info.eval_crop == "garg" else info.eval_crop,
                              flip_tta=flip_tta)
  else:
    task = tasks_lib.get_task("segmentation", num_classes=info.num_classes,
                              ignore_label=info.ignore_label,
                              aux_weight=float(config.get("aux_weight", 0.4)))
  return TaskRuntime(name, task, info, head_cfg)


def runtime_from_train_config(tcfg: dict):
  """(TaskRuntime, data config) of a finished training run's config.json dict (search, export)."""
  import ml_collections
  task = tcfg.get("task", "classification")
  if task == "classification":
    from evonas_jax import data as data_lib
    data_cfg = data_lib.get_config_defaults()
  else:
    from evonas_jax.data.dense import dense_config_defaults
    data_cfg = dense_config_defaults(tcfg["data"]["name"])
  data_cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in tcfg["data"].items()})
  rt = make_runtime(ml_collections.ConfigDict({"task": task, "data": data_cfg,
                                               "head_cfg": tcfg.get("head_cfg", {}) or {},
                                               "aux_weight": tcfg.get("aux_weight", 0.4),
                                               # The run's evaluation protocol (export and
                                               # fine-tuning evaluate as training did).
                                               "depth_flip_tta": bool(tcfg.get("depth_flip_tta",
                                                                               False))}))
  return rt, data_cfg
