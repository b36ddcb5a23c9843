"""Task definitions (evonas_jax.tasks): losses and jit/vmap-able eval sums against independent
numpy references (evonas_jax.metrics, written separately, and hand formulas)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax import metrics
from evonas_jax.tasks import get_task, sum_stats


def _depth_batch(rng, b=5, h=6, w=7, max_depth=10.0):
  gt = rng.uniform(0.5, 9.0, (b, h, w)).astype(np.float32)
  gt[rng.uniform(size=gt.shape) < 0.3] = 0.0           # missing pixels
  gt[1] = 0.0                                          # an image without any valid pixel
  gt[2, 0, 0] = 12.0                                   # beyond max_depth: not valid
  pred = np.clip(gt + rng.normal(0, 1.0, gt.shape), -1.0, 14.0).astype(np.float32)
  mask = np.array([1, 1, 1, 1, 0], np.float32)         # last row is padding
  return pred, gt, mask


@pytest.mark.parametrize("crop", [None, "garg"])
def test_depth_eval_stats_equal_metrics_module(crop):
  rng = np.random.default_rng(0)
  task = get_task("depth", min_depth=1e-3, max_depth=10.0, eval_crop=crop)
  stats = None
  ref = metrics.DepthMetrics(min_depth=1e-3, max_depth=10.0, crop=crop)
  for i in range(2):     # streaming over two batches
    pred, gt, mask = _depth_batch(rng)
    s = jax.jit(task.eval_stats)({"depth": jnp.asarray(pred)},
                                 {"depth": jnp.asarray(gt), "mask": jnp.asarray(mask)})
    stats = sum_stats(stats, s)
    ref.update(pred, gt, mask)
  got, want = task.finalize(jax.device_get(stats)), ref.result()
  assert float(stats["count"]) == want["num_images"]
  for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "d1", "d2", "d3"):
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, err_msg=k)
  assert got["error"] == got["abs_rel"]


def test_depth_losses_match_numpy_silog():
  rng = np.random.default_rng(1)
  pred, gt, _ = _depth_batch(rng)
  pred = np.abs(pred) + 0.1
  task = get_task("depth", min_depth=1e-3, max_depth=10.0)
  loss, m = task.task_loss({"depth": jnp.asarray(pred)}, {"depth": jnp.asarray(gt)})
  valid = (gt > 1e-3) & (gt < 10.0)
  g = np.log(pred[valid]) - np.log(gt[valid])
  want = 10 * np.sqrt(np.mean(g ** 2) - 0.85 * np.mean(g) ** 2)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # Output KD: SI-log against the teacher map, valid where teacher > 1e-3 (research §3.3).
  teacher = np.where(rng.uniform(size=gt.shape) < 0.2, 0.0, rng.uniform(1, 5, gt.shape))
  kd = task.kd_loss({"depth": jnp.asarray(pred)}, jnp.asarray(teacher, jnp.float32))
  v = teacher > 1e-3
  g = np.log(pred[v]) - np.log(teacher[v])
  np.testing.assert_allclose(float(kd), 10 * np.sqrt(np.mean(g ** 2) - 0.85 * np.mean(g) ** 2),
                             rtol=1e-5)


def test_segmentation_stats_loss_and_kd():
  rng = np.random.default_rng(2)
  k, ign = 5, 255
  logits = rng.normal(size=(3, 4, 6, k)).astype(np.float32)
  aux = rng.normal(size=(3, 4, 6, k)).astype(np.float32)
  lab = rng.integers(0, k, (3, 4, 6)).astype(np.int32)
  lab[rng.uniform(size=lab.shape) < 0.25] = ign
  mask = np.array([1, 1, 0], np.float32)
  task = get_task("segmentation", num_classes=k, ignore_label=ign, aux_weight=0.4)
  out = {"logits": jnp.asarray(logits), "aux_logits": jnp.asarray(aux)}
  s = task.eval_stats(out, {"label": jnp.asarray(lab), "mask": jnp.asarray(mask)})
  ref = metrics.SegmentationMetrics(k, ign)
  ref.update(logits.argmax(-1), lab, mask)
  np.testing.assert_array_equal(np.asarray(s["confusion"]), ref.cm)
  got, want = task.finalize(s), ref.result()
  np.testing.assert_allclose(got["miou"], want["miou"], rtol=1e-12)
  np.testing.assert_allclose(got["pixel_acc"], want["pixel_acc"], rtol=1e-12)

  def ce(lg):
    v = lab != ign
    lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    return -np.take_along_axis(lp, np.where(v, lab, 0)[..., None], -1)[..., 0][v].mean()
  loss, m = task.task_loss(out, {"label": jnp.asarray(lab)})
  np.testing.assert_allclose(float(m["ce"]), ce(logits), rtol=1e-5)
  np.testing.assert_allclose(float(loss), ce(logits) + 0.4 * ce(aux), rtol=1e-5)
  # Pixel KL from the teacher's softmax, over all pixels (T = 1).
  t = rng.normal(size=logits.shape).astype(np.float32)
  pt = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
  ps = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  want = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
  np.testing.assert_allclose(float(task.kd_loss(out, jnp.asarray(t))), want, rtol=1e-5)


def test_classification_stats_and_registry():
  task = get_task("classification", num_classes=3)
  logits = jnp.asarray([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [5.0, 0, 0]])
  s = task.eval_stats(logits, {"label": jnp.asarray([0, 2, 2, 1]),
                               "mask": jnp.asarray([1.0, 1.0, 1.0, 0.0])})
  assert float(s["correct"]) == 2 and float(s["count"]) == 3
  assert task.finalize(s)["error"] == pytest.approx(1 / 3)
  with pytest.raises(ValueError, match=r"task='detection' is not one of \('classification', "
                                       r"'depth', 'segmentation'\)"):
    get_task("detection")
