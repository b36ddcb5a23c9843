"""evonas_jax.metrics against values computed by hand and brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evonas_jax import metrics


# --------------------------------------------------------------------------- depth

# 2x3 map: valid pairs (pred, gt) = (2, 1), (2, 2), (2, 4), (1, 0.5); gt 0 (missing) and
# gt 20 (> max_depth 10) do not count. Ratios max(p/g, g/p) = 2, 1, 2, 2.
GT = np.array([[1.0, 2.0, 0.0], [4.0, 0.5, 20.0]])
PRED = np.array([[2.0, 2.0, 5.0], [2.0, 1.0, 3.0]])
LN2 = math.log(2.0)
HAND = {
    "abs_rel": (1 / 1 + 0 + 2 / 4 + 0.5 / 0.5) / 4,          # 0.625
    "sq_rel": (1 / 1 + 0 + 4 / 4 + 0.25 / 0.5) / 4,           # 0.625
    "rmse": math.sqrt((1 + 0 + 4 + 0.25) / 4),
    "rmse_log": math.sqrt(3 * LN2 ** 2 / 4),                  # log errors ln2, 0, -ln2, ln2
    "log10": 3 * math.log10(2.0) / 4,
    "silog": 100 * math.sqrt(3 * LN2 ** 2 / 4 - (LN2 / 4) ** 2),  # = 100 ln2 sqrt(11) / 4
    "d1": 0.25, "d2": 0.25, "d3": 0.25,                       # 2 > 1.25^3 = 1.953
}


def test_depth_metrics_match_hand_computed_2x3_map():
  got = metrics.depth_metrics(PRED, GT, min_depth=0.1, max_depth=10.0)
  assert set(got) == set(metrics.DEPTH_METRICS)
  for k, v in HAND.items():
    assert got[k] == pytest.approx(v, rel=1e-12), k
  assert HAND["silog"] == pytest.approx(100 * LN2 * math.sqrt(11) / 4)


def test_delta_thresholds_and_prediction_clipping():
  gt = np.array([[1.0, 1.0, 1.0, 5.0]])
  pred = np.array([[1.2, 1.5, 1.9, 100.0]])  # ratios 1.2, 1.5, 1.9; 100 is clipped to max_depth 10 -> ratio 2.
  got = metrics.depth_metrics(pred, gt, min_depth=0.1, max_depth=10.0)
  assert got["d1"] == 0.25 and got["d2"] == 0.5 and got["d3"] == 0.75
  assert got["abs_rel"] == pytest.approx((0.2 + 0.5 + 0.9 + 5 / 5) / 4)
  # A prediction below min_depth is clipped up (and never gives log(0)).
  low = metrics.depth_metrics(np.array([[0.0]]), np.array([[2.0]]), min_depth=1.0, max_depth=10.0)
  assert low["abs_rel"] == pytest.approx(0.5)


def test_no_valid_pixel_gives_none_and_bad_range_raises():
  assert metrics.depth_metrics(np.ones((2, 2)), np.zeros((2, 2)), min_depth=0.1, max_depth=10) is None
  with pytest.raises(ValueError, match="min_depth"):
    metrics.depth_metrics(PRED, GT, min_depth=5.0, max_depth=1.0)
  with pytest.raises(ValueError, match=r"\(H, W\)"):
    metrics.depth_metrics(PRED[0], GT[0], min_depth=0.1, max_depth=10.0)


def test_accumulator_averages_per_image_not_per_pixel_and_skips_padding():
  # Image A: 1 valid pixel with abs_rel 1; image B: 3 valid pixels with abs_rel 0.
  gt = np.array([[[1.0, 0, 0, 0]], [[1.0, 2.0, 3.0, 0]], [[1.0, 1.0, 1.0, 1.0]], [[0.0, 0, 0, 0]]])
  pred = np.array([[[2.0, 9, 9, 9]], [[1.0, 2.0, 3.0, 9]], [[7.0, 7.0, 7.0, 7.0]], [[1.0, 1, 1, 1]]])
  acc = metrics.DepthMetrics(min_depth=0.1, max_depth=10.0)
  acc.update(pred[:2], gt[:2])
  acc.update(pred[2:], gt[2:], mask=np.array([0.0, 1.0]))  # Row 2 is padding; row 3 has no valid pixel.
  r = acc.result()
  assert r["num_images"] == 2 and r["num_skipped"] == 1
  assert r["abs_rel"] == pytest.approx(0.5)  # Pixel-pooled would be 0.25.
  assert r["d1"] == pytest.approx(0.5)


def test_accumulator_equals_mean_of_brute_force_per_image_loops():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0.5, 12.0, (3, 5, 7))
  gt[rng.random(gt.shape) < 0.3] = 0.0
  pred = rng.uniform(0.01, 15.0, gt.shape)
  acc = metrics.DepthMetrics(min_depth=1.0, max_depth=10.0)
  acc.update(pred, gt)
  per_image = []
  for p, g in zip(pred, gt):
    vals = {k: [] for k in ("ae", "se", "le", "l10", "r")}
    for pv, gv in zip(p.ravel(), g.ravel()):
      if not 1.0 < gv < 10.0:
        continue
      pv = min(max(pv, 1.0), 10.0)
      vals["ae"].append(abs(pv - gv) / gv)
      vals["se"].append((pv - gv) ** 2)
      vals["le"].append(math.log(pv) - math.log(gv))
      vals["l10"].append(abs(math.log10(pv) - math.log10(gv)))
      vals["r"].append(max(pv / gv, gv / pv))
    le = np.array(vals["le"])
    per_image.append({"abs_rel": np.mean(vals["ae"]), "rmse": math.sqrt(np.mean(vals["se"])),
                      "log10": np.mean(vals["l10"]), "silog": 100 * math.sqrt(np.mean(le ** 2) - np.mean(le) ** 2),
                      "d1": np.mean(np.array(vals["r"]) < 1.25)})
  r = acc.result()
  for k in per_image[0]:
    assert r[k] == pytest.approx(np.mean([m[k] for m in per_image]), rel=1e-10), k


def test_eigen_crop_selects_rows_45_471_cols_41_601():
  m = metrics.crop_mask((480, 640), "eigen")
  assert m.sum() == (471 - 45) * (601 - 41)
  assert m[45, 41] and m[470, 600] and not m[44, 41] and not m[45, 40] and not m[471, 600] and not m[470, 601]
  with pytest.raises(ValueError, match="480, 640"):
    metrics.crop_mask((352, 1216), "eigen")


def test_garg_crop_fractions_of_the_given_frame():
  # crop_mask treats its shape as the full frame (the eval pipeline takes the KITTI crop on the
  # 375 x 1242 frame before the KB crop: tests/test_depth_eval.py); fractions of a 352 x 1216
  # map, for the arithmetic: 0.40810811 * 352 = 143.65 -> 143; 0.99189189 * 352 = 349.15 -> 349;
  # 0.03594771 * 1216 = 43.71 -> 43; 0.96405229 * 1216 = 1172.29 -> 1172.
  m = metrics.crop_mask((352, 1216), "garg")
  rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
  assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (143, 349, 43, 1172)
  assert m.sum() == (349 - 143) * (1172 - 43)
  with pytest.raises(ValueError, match="crop must be one of"):
    metrics.crop_mask((4, 4), "nyu")


def test_crop_excludes_pixels_outside_it():
  gt = np.full((480, 640), 2.0)
  pred = np.full((480, 640), 2.0)
  pred[:45] = 8.0  # Wrong only above the Eigen crop.
  assert metrics.depth_metrics(pred, gt, min_depth=0.1, max_depth=10, crop="eigen")["abs_rel"] == 0.0
  assert metrics.depth_metrics(pred, gt, min_depth=0.1, max_depth=10)["abs_rel"] > 0.0


# --------------------------------------------------------------------------- segmentation

SEG_GT = np.array([[0, 0, 1], [1, 2, 255]])
SEG_PRED = np.array([[0, 1, 1], [2, 2, 0]])


def test_confusion_matrix_and_miou_by_hand():
  cm = metrics.confusion_matrix(SEG_PRED, SEG_GT, num_classes=3, ignore_label=255)
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])  # The 255 pixel is dropped.
  s = metrics.segmentation_scores(cm)
  np.testing.assert_allclose(s["per_class_iou"], [1 / 2, 1 / 3, 1 / 2])
  assert s["miou"] == pytest.approx(4 / 9)
  assert s["pixel_acc"] == pytest.approx(3 / 5)
  assert s["mean_acc"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
  assert s["num_pixels"] == 5


def test_absent_class_is_excluded_but_false_positive_class_counts():
  s = metrics.segmentation_scores(metrics.confusion_matrix(SEG_PRED, SEG_GT, 4, 255))
  assert np.isnan(s["per_class_iou"][3]) and s["miou"] == pytest.approx(4 / 9)
  pred = SEG_PRED.copy()
  pred[0, 0] = 3  # Class 3 predicted, never in gt: IoU 0, counted.
  s = metrics.segmentation_scores(metrics.confusion_matrix(pred, SEG_GT, 4, 255))
  assert s["per_class_iou"][3] == 0.0
  assert s["miou"] == pytest.approx((0 + 1 / 3 + 1 / 2 + 0) / 4)


def test_streaming_matches_brute_force_and_rejects_bad_labels():
  rng = np.random.default_rng(1)
  gt = rng.integers(0, 5, (4, 6, 7))
  gt[rng.random(gt.shape) < 0.2] = 255
  pred = rng.integers(0, 5, gt.shape)
  acc = metrics.SegmentationMetrics(num_classes=5, ignore_label=255)
  acc.update(pred[:2], gt[:2])
  acc.update(np.concatenate([pred[2:], pred[:1]]), np.concatenate([gt[2:], gt[:1]]), mask=np.array([1, 1, 0]))
  brute = np.zeros((5, 5), np.int64)
  for g, p in zip(gt.ravel(), pred.ravel()):
    if g != 255:
      brute[g, p] += 1
  np.testing.assert_array_equal(acc.cm, brute)
  ious = [brute[c, c] / (brute[c].sum() + brute[:, c].sum() - brute[c, c]) for c in range(5)]
  assert acc.result()["miou"] == pytest.approx(np.mean(ious))
  with pytest.raises(ValueError, match=r"gt labels must be in \[0, 5\)"):
    metrics.confusion_matrix(np.zeros(3, int), np.array([0, 7, 1]), 5, 255)
  with pytest.raises(ValueError, match="pred labels"):
    metrics.confusion_matrix(np.array([0, -1, 1]), np.zeros(3, int), 5, 255)
