"""Dense-prediction metrics: monocular depth and semantic segmentation (numpy, host side).

Depth (the 9 standard metrics of Eigen et al. / BTS / NeWCRFs evaluations):

  abs_rel   mean |p - g| / g            sq_rel   mean (p - g)^2 / g
  rmse      sqrt mean (p - g)^2         rmse_log sqrt mean (log p - log g)^2
  log10     mean |log10 p - log10 g|    silog    100 * sqrt(mean(e^2) - mean(e)^2), e = log p - log g
  d1/d2/d3  fraction of max(p/g, g/p) < 1.25, 1.25^2, 1.25^3

over the *valid* pixels of each image: min_depth < g < max_depth (0 marks missing ground
truth, so it is never valid) and inside the optional evaluation crop; predictions are
clipped to [min_depth, max_depth] first. Each image gives one value per metric and the
dataset value is the **mean over images** (every image weighs the same whatever its number
of valid pixels). That is how the published KITTI/NYU numbers of BTS, AdaBins, NeWCRFs and
EvoNAS are computed (their eval scripts call compute_errors per image and average), so
numbers from here are comparable with theirs. Images without a valid pixel are skipped and
counted (`num_skipped`).

Evaluation crops (boolean masks, `crop_mask`):
  "eigen"  NYU-Depth v2: rows 45:471, cols 41:601 of a 480x640 map (Eigen et al. 2014).
  "garg"   KITTI: rows [int(0.40810811 H), int(0.99189189 H)), cols [int(0.03594771 W),
           int(0.96405229 W)) (Garg et al. 2016) of the FULL-RESOLUTION frame H x W (e.g.
           375 x 1242: rows 153:371, cols 44:1197). The fractions are of the original camera
           frame, not of a KB-cropped (352 x 1216) or resized map: the reference evaluation
           pastes the prediction back into the full frame first. `crop_mask(shape, "garg")`
           therefore treats `shape` as the full frame; the dense eval pipeline
           (`DenseTransform.eval_example`) applies the crop on the full frame before the KB
           crop and carries it through resizing.

Segmentation: a streaming confusion matrix (rows = ground truth, cols = prediction) that
drops ignore-label pixels. IoU_c = TP / (TP + FP + FN); a class absent from both ground truth
and predictions (TP + FP + FN = 0) has an undefined IoU (NaN) and is left out of the mean,
which is the mmsegmentation convention (nanmean over classes) that ADE20K mIoU numbers use.
Pixel accuracy = trace / total over non-ignored pixels.

Everything takes numpy or jax arrays (converted with np.asarray) and returns Python floats.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3")
DEPTH_CROPS = ("eigen", "garg")
# Eigen crop of NYU-Depth v2 (480 x 640): rows 45:471, cols 41:601.
EIGEN_NYU_SHAPE = (480, 640)
EIGEN_NYU_ROWS = (45, 471)
EIGEN_NYU_COLS = (41, 601)
# Garg crop of KITTI as fractions of (H, W).
GARG_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


def garg_crop_bounds(h: int, w: int) -> tuple[int, int, int, int]:
  """(top, bottom, left, right), half-open, of the Garg crop of a full-resolution h x w KITTI
  frame; int() truncation as in the reference KITTI evaluation. 375 x 1242 -> (153, 371, 44, 1197)."""
  t, b, l, r = GARG_FRACTIONS
  return int(t * h), int(b * h), int(l * w), int(r * w)


def crop_mask(shape: tuple[int, int], crop: str | None) -> np.ndarray:
  """Boolean (H, W) mask of the evaluation crop (all True for crop=None).

  Raises:
    ValueError: unknown crop, or "eigen" on a map that is not 480 x 640.
  """
  h, w = int(shape[0]), int(shape[1])
  mask = np.zeros((h, w), bool)
  if crop is None or crop == "none":
    mask[:] = True
  elif crop == "eigen":
    if (h, w) != EIGEN_NYU_SHAPE:
      raise ValueError(f"crop='eigen' is defined on NYU-Depth v2 maps of shape {EIGEN_NYU_SHAPE}; got {(h, w)}")
    mask[EIGEN_NYU_ROWS[0]:EIGEN_NYU_ROWS[1], EIGEN_NYU_COLS[0]:EIGEN_NYU_COLS[1]] = True
  elif crop == "garg":
    # `shape` is taken as the full-resolution frame (see the module doc).
    top, bottom, left, right = garg_crop_bounds(h, w)
    mask[top:bottom, left:right] = True
  else:
    raise ValueError(f"crop must be one of {DEPTH_CROPS} or None; got {crop!r}")
  return mask


def valid_depth_mask(gt: np.ndarray, min_depth: float, max_depth: float, crop: str | None = None) -> np.ndarray:
  """Boolean mask of pixels that count: min_depth < gt < max_depth and inside the crop; shape of gt."""
  gt = np.asarray(gt)
  valid = np.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
  if crop is not None and crop != "none":
    valid &= crop_mask(gt.shape[-2:], crop)
  return valid


def _check_depth_range(min_depth: float, max_depth: float) -> None:
  if not 0 < min_depth < max_depth:
    raise ValueError(f"need 0 < min_depth < max_depth; got min_depth={min_depth}, max_depth={max_depth}")


def depth_errors_from_pixels(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  """The 9 metrics over 1-D arrays of valid pixels (pred already clipped, both > 0)."""
  pred = np.asarray(pred, np.float64)
  gt = np.asarray(gt, np.float64)
  if pred.size == 0:
    raise ValueError("no valid pixels")
  ratio = np.maximum(pred / gt, gt / pred)
  diff = pred - gt
  log_diff = np.log(pred) - np.log(gt)
  return {
      "abs_rel": float(np.mean(np.abs(diff) / gt)),
      "sq_rel": float(np.mean(diff ** 2 / gt)),
      "rmse": float(np.sqrt(np.mean(diff ** 2))),
      "rmse_log": float(np.sqrt(np.mean(log_diff ** 2))),
      "log10": float(np.mean(np.abs(np.log10(pred) - np.log10(gt)))),
      # max(0, .) guards a tiny negative variance from rounding when all errors are equal.
      "silog": float(100.0 * np.sqrt(max(0.0, np.mean(log_diff ** 2) - np.mean(log_diff) ** 2))),
      "d1": float(np.mean(ratio < 1.25)),
      "d2": float(np.mean(ratio < 1.25 ** 2)),
      "d3": float(np.mean(ratio < 1.25 ** 3)),
  }


def depth_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    min_depth: float,
    max_depth: float,
    crop: str | None = None,
) -> dict[str, float] | None:
  """Metrics of ONE image.

  Args:
    pred: predicted depth (H, W) in metres.
    gt: ground-truth depth (H, W) in metres, 0 (or nan) = missing.
    min_depth, max_depth: valid ground-truth range (exclusive) and prediction clip range.
    crop: None, "eigen" or "garg".

  Returns:
    {metric: value} for `DEPTH_METRICS`, or None when the image has no valid pixel.
  """
  _check_depth_range(min_depth, max_depth)
  pred, gt = np.asarray(pred), np.asarray(gt)
  if pred.shape != gt.shape or pred.ndim != 2:
    raise ValueError(f"pred and gt must both be (H, W); got {pred.shape} and {gt.shape}")
  valid = valid_depth_mask(gt, min_depth, max_depth, crop)
  if not valid.any():
    return None
  p = np.clip(np.nan_to_num(pred[valid].astype(np.float64), nan=min_depth), min_depth, max_depth)
  return depth_errors_from_pixels(p, gt[valid])


@dataclasses.dataclass
class DepthMetrics:
  """Streaming per-image-averaged depth metrics for an eval loop.

  Usage::

      acc = DepthMetrics(min_depth=1e-3, max_depth=10.0, crop="eigen")
      for batch in dense_eval_iterator(cfg, "validation", 8):
        acc.update(predict(batch["image"]), batch["depth"], batch["mask"])
      acc.result()   # {"abs_rel": ..., ..., "num_images": n, "num_skipped": k}
  """

  min_depth: float
  max_depth: float
  crop: str | None = None
  sums: dict[str, float] = dataclasses.field(default_factory=lambda: {k: 0.0 for k in DEPTH_METRICS})
  num_images: int = 0
  num_skipped: int = 0

  def __post_init__(self):
    _check_depth_range(self.min_depth, self.max_depth)
    if self.crop not in (None, "none") + DEPTH_CROPS:
      raise ValueError(f"crop must be one of {DEPTH_CROPS} or None; got {self.crop!r}")

  def update(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Adds a batch: pred, gt (B, H, W) metres; mask (B,) 1 = real row, 0 = padding (skipped)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 3:
      raise ValueError(f"pred and gt must both be (B, H, W); got {pred.shape} and {gt.shape}")
    rows = np.ones(len(gt), bool) if mask is None else np.asarray(mask).reshape(-1) > 0
    for i in np.flatnonzero(rows):
      m = depth_metrics(pred[i], gt[i], min_depth=self.min_depth, max_depth=self.max_depth, crop=self.crop)
      if m is None:
        self.num_skipped += 1
        continue
      for k in DEPTH_METRICS:
        self.sums[k] += m[k]
      self.num_images += 1

  def result(self) -> dict[str, float]:
    """Mean over images of each metric (nan when no image counted) + num_images, num_skipped."""
    n = self.num_images
    out = {k: (self.sums[k] / n if n else float("nan")) for k in DEPTH_METRICS}
    out.update(num_images=n, num_skipped=self.num_skipped)
    return out


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int | None = 255) -> np.ndarray:
  """int64 (K, K) confusion matrix, rows = ground truth, cols = prediction; ignore pixels dropped.

  Args:
    pred, gt: integer label maps of the same shape (any rank).
    num_classes: K.
    ignore_label: gt value to skip (None: none).

  Raises:
    ValueError: shapes differ, or a non-ignored label is outside [0, K).
  """
  pred, gt = np.asarray(pred), np.asarray(gt)
  if pred.shape != gt.shape:
    raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
  gt = gt.reshape(-1).astype(np.int64)
  pred = pred.reshape(-1).astype(np.int64)
  keep = gt != ignore_label if ignore_label is not None else np.ones(gt.shape, bool)
  gt, pred = gt[keep], pred[keep]
  for name, a in (("gt", gt), ("pred", pred)):
    if a.size and (a.min() < 0 or a.max() >= num_classes):
      raise ValueError(f"{name} labels must be in [0, {num_classes}) (or ignore_label={ignore_label} for gt); "
                       f"got range [{a.min()}, {a.max()}]")
  return np.bincount(gt * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(cm: np.ndarray) -> dict:
  """mIoU, pixel accuracy, mean class accuracy and per-class IoU from a (K, K) confusion matrix.

  Classes with TP + FP + FN = 0 get IoU nan and do not enter the mean (see module doc).
  """
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  gt_count = cm.sum(axis=1)
  pred_count = cm.sum(axis=0)
  union = gt_count + pred_count - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    acc = np.where(gt_count > 0, tp / gt_count, np.nan)
  total = cm.sum()
  present = ~np.isnan(iou)
  return {
      "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
      "pixel_acc": float(tp.sum() / total) if total else float("nan"),
      "mean_acc": float(np.nanmean(acc)) if (~np.isnan(acc)).any() else float("nan"),
      "per_class_iou": iou,
      "num_pixels": int(total),
  }


@dataclasses.dataclass
class SegmentationMetrics:
  """Streaming confusion matrix for an eval loop.

  ``update(pred (B, H, W) int, gt (B, H, W) int, mask (B,) optional)``; ``result()`` gives
  `segmentation_scores` of the accumulated matrix (also kept in ``.cm``).
  """

  num_classes: int
  ignore_label: int | None = 255
  cm: np.ndarray = None

  def __post_init__(self):
    if int(self.num_classes) < 1:
      raise ValueError(f"num_classes must be >= 1; got {self.num_classes!r}")
    self.cm = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> None:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if mask is not None:
      rows = np.asarray(mask).reshape(-1) > 0
      pred, gt = pred[rows], gt[rows]
    self.cm += confusion_matrix(pred, gt, self.num_classes, self.ignore_label)

  def result(self) -> dict:
    return segmentation_scores(self.cm)


__all__ = [
    "DEPTH_CROPS", "DEPTH_METRICS", "DepthMetrics", "SegmentationMetrics", "confusion_matrix", "crop_mask",
    "garg_crop_bounds",
    "depth_errors_from_pixels", "depth_metrics", "segmentation_scores", "valid_depth_mask",
]
