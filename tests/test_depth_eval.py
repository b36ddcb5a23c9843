"""Depth evaluation as the official code does it: flip test-time augmentation with the edge-blend
post-processing (`tasks.flip_tta_blend`, `tasks.Depth.eval_output`), the KITTI Garg crop on the
full-resolution frame (`metrics.garg_crop_bounds`, the dense eval pipeline), and the depth search
fitness with TTA on and off, each against a naive numpy reference written here."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax import dmmpe, metrics
from evonas_jax.data import dense_pipeline
from evonas_jax.tasks import flip_tta_blend, get_task


def naive_flip_blend(pred, pred_flipped):
  """Column-by-column numpy loop of the edge-blend post-processing (float64).

  pred, pred_flipped: (B, H, W); pred_flipped is the raw prediction on the mirrored image."""
  pred = np.asarray(pred, np.float64)
  pf = np.asarray(pred_flipped, np.float64)
  b, h, w = pred.shape
  out = np.empty_like(pred)
  for j in range(w):
    back = pf[:, :, w - 1 - j]                         # flipped back: column j of the mirror
    x = j / (w - 1) if w > 1 else 0.0
    m = 1.0 - min(max(20.0 * (x - 0.05), 0.0), 1.0)    # left-border weight of the flipped pass
    xr = (w - 1 - j) / (w - 1) if w > 1 else 0.0
    mr = 1.0 - min(max(20.0 * (xr - 0.05), 0.0), 1.0)  # right-border weight of the plain pass
    out[:, :, j] = mr * pred[:, :, j] + m * back + (1.0 - m - mr) * 0.5 * (pred[:, :, j] + back)
  return out


@pytest.mark.parametrize("w", [1, 2, 7, 41, 160])
def test_flip_blend_equals_naive_numpy(w):
  rng = np.random.default_rng(w)
  pred = rng.uniform(0.5, 9.0, (3, 5, w)).astype(np.float32)
  pf = rng.uniform(0.5, 9.0, (3, 5, w)).astype(np.float32)
  got = np.asarray(jax.jit(flip_tta_blend)(pred, pf))
  np.testing.assert_allclose(got, naive_flip_blend(pred, pf), rtol=1e-6, atol=1e-6)
  if w >= 41:
    # The borders take one pass each, the middle the mean.
    np.testing.assert_allclose(got[..., 0], pf[..., -1], rtol=1e-6)
    np.testing.assert_allclose(got[..., -1], pred[..., -1], rtol=1e-6)
    mid = w // 2
    np.testing.assert_allclose(got[..., mid], 0.5 * (pred[..., mid] + pf[..., w - 1 - mid]), rtol=1e-6)


def test_depth_eval_output_two_passes_and_off_by_default():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 4, 9, 3)).astype(np.float32)
  wts = rng.normal(size=(3,)).astype(np.float32)
  ramp = np.linspace(1.0, 2.0, 9, dtype=np.float32)     # not mirror-symmetric: passes differ

  def apply(x):
    return {"depth": 3.0 + jnp.tanh(x @ wts) * ramp, "extra": jnp.zeros(())}

  plain = get_task("depth", max_depth=10.0)
  assert plain.flip_tta is False
  np.testing.assert_array_equal(plain.eval_output(apply, images)["depth"], apply(images)["depth"])
  tta = get_task("depth", max_depth=10.0, flip_tta=True)
  got = jax.jit(lambda x: tta.eval_output(apply, x))(images)
  want = naive_flip_blend(np.asarray(apply(images)["depth"]),
                          np.asarray(apply(images[:, :, ::-1])["depth"]))
  np.testing.assert_allclose(got["depth"], want, rtol=1e-6)
  assert "extra" in got
  # Classification and segmentation evaluate one plain pass.
  for t in (get_task("classification"), get_task("segmentation", num_classes=3)):
    assert t.eval_output(lambda x: x * 2, images) is not None


# ------------------------------------------------------------------------------- Garg crop


def test_garg_crop_on_full_resolution_kitti_frame():
  # Closed form on 375 x 1242: 0.40810811*375 = 153.04, 0.99189189*375 = 371.96,
  # 0.03594771*1242 = 44.65, 0.96405229*1242 = 1197.35 -> rows 153:371, cols 44:1197.
  assert metrics.garg_crop_bounds(375, 1242) == (153, 371, 44, 1197)
  m = metrics.crop_mask((375, 1242), "garg")
  want = np.zeros((375, 1242), bool)
  want[153:371, 44:1197] = True
  np.testing.assert_array_equal(m, want)


def _kitti_record(rng, h, w):
  depth = rng.uniform(1.0, 79.0, (h, w)).astype(np.float32)
  depth[rng.random((h, w)) < 0.5] = 0.0
  return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "depth": depth}


@pytest.mark.parametrize("hw", [(375, 1242), (370, 1224), (374, 1238), (376, 1241)])
def test_eval_pipeline_takes_garg_crop_on_the_full_frame(hw):
  """The KB-cropped eval ground truth keeps exactly the pixels of the full-frame Garg crop
  (the reference pastes the 352 x 1216 prediction back into the full frame and crops there),
  which differs from cropping the 352 x 1216 map by the same fractions; training is uncropped."""
  h, w = hw
  rng = np.random.default_rng(h + w)
  rec = _kitti_record(rng, h, w)
  t = dense_pipeline.DenseTransform(task="depth", kb_crop=True, crop_size=dense_pipeline.KB_CROP,
                                    random_flip=False, eval_crop="garg")
  got = t.eval_example(rec)["depth"]
  # Reference, the official way: the full-frame mask, then the KB-crop window of it.
  top, left = h - 352, (w - 1216) // 2
  ft, fb, fl, fr = metrics.garg_crop_bounds(h, w)
  full = np.zeros((h, w), bool)
  full[ft:fb, fl:fr] = True
  assert full[top:top + 352, left:left + 1216].sum() == full.sum()   # Garg inside the KB crop
  want = np.where(full, rec["depth"], 0.0)[top:top + 352, left:left + 1216]
  np.testing.assert_array_equal(got, want)
  # Not the same pixels as the fractions of the cropped map (the old behaviour).
  assert not np.array_equal(full[top:top + 352, left:left + 1216],
                            metrics.crop_mask((352, 1216), "garg"))
  # Training examples see every ground-truth pixel of their window.
  tr = t.train_example(rec, {"crop_y": 0.0, "crop_x": 0.0, "bright": 0.5, "contrast": 0.5,
                             "flip": False})
  np.testing.assert_array_equal(tr["depth"], rec["depth"][top:top + 352, left:left + 1216])


def test_eval_pipeline_garg_crop_follows_a_resize():
  """With a resize the crop region goes through the same nearest gather as the depth map."""
  rng = np.random.default_rng(5)
  rec = _kitti_record(rng, 375, 1242)
  t = dense_pipeline.DenseTransform(task="depth", kb_crop=True, resize_to=(176, 608),
                                    crop_size=(176, 608), random_flip=False, eval_crop="garg")
  got = t.eval_example(rec)["depth"]
  kb = lambda a: a[23:375, 13:1229]
  full = metrics.crop_mask((375, 1242), "garg")
  ri, ci = dense_pipeline.nearest_indices(352, 176), dense_pipeline.nearest_indices(1216, 608)
  want = np.where(kb(full), kb(rec["depth"]), 0.0)[ri[:, None], ci[None, :]]
  np.testing.assert_array_equal(got, want)


# -------------------------------------------------------------------- search fitness with TTA


class ToyDepthNet:
  """Stand-in for DenseEvoNet with its interface (apply(variables, images (B, H, W, 3), masks,
  train=False) -> {"depth": (B, H, W)}, BatchNorm statistics in "batch_stats"): a conv, a
  BatchNorm, a mask-dependent gain and a conv to positive depth. Compiles in about a second,
  where the real tiny DenseEvoNet takes minutes on 2 cores; the evaluator only sees the
  interface."""

  def __init__(self):
    import flax.linen as nn

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x, masks, train=False):
        gain = 1.0 + 0.1 * sum(jnp.sum(m) for m in jax.tree.leaves(masks))
        h = nn.Conv(4, (3, 3))(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = nn.Conv(1, (3, 3))(jnp.tanh(h) * gain)[..., 0]
        return {"depth": 0.5 + 9.0 * jax.nn.sigmoid(h)}
    self.net = Net()

  def init(self, rng, x, masks):
    return self.net.init(rng, x, masks)

  def apply(self, *args, **kwargs):
    return self.net.apply(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny_depth():
  from evonas_jax.space import genome_to_masks, get_space
  space = dataclasses.replace(get_space("evonas", "tiny"), max_depths=(1, 1, 1, 1))
  hw = 16
  model = ToyDepthNet()
  g0 = np.asarray(space.encode(space.largest()), np.int32)
  v = model.init(jax.random.key(0), jnp.zeros((1, hw, hw, 3)), genome_to_masks(space, g0))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 3, hw, hw, 3)).astype(np.float32)
  gt = rng.uniform(1.0, 9.0, (2, 3, hw, hw)).astype(np.float32)
  gt[rng.random(gt.shape) < 0.3] = 0.0
  mask = np.ones((2, 3), np.float32)
  mask[1, 2] = 0.0                                     # a padded last batch
  data = dmmpe.EvalData(rng.normal(size=(2, 3, hw, hw, 3)), images, gt, mask, "depth")
  return space, model, v, data


def _reference_abs_rel(space, model, v, data, genome, flip):
  """Independent path: the trainer's BN recalibration + plain model.apply, numpy blend, numpy
  per-image metrics (`metrics.DepthMetrics`)."""
  from evonas_jax.space import genome_to_masks
  from evonas_jax.supernet_train import make_bn_step, recalibrate_bn
  masks = genome_to_masks(space, genome)
  vr = recalibrate_bn(make_bn_step(model), v, list(data.calib), masks)
  acc = metrics.DepthMetrics(min_depth=1e-3, max_depth=10.0)
  for im, gt, mk in zip(data.images, data.labels, data.mask):
    pred = np.asarray(model.apply(vr, im, masks)["depth"])
    if flip:
      pred = naive_flip_blend(pred, np.asarray(model.apply(vr, im[:, :, ::-1], masks)["depth"]))
    acc.update(pred, gt, mk)
  return acc.result()["abs_rel"]


def test_search_fitness_uses_flip_tta(tiny_depth):
  import ml_collections
  from evonas_jax.search_lib import validate_config, with_depth_flip_tta
  from evonas_jax.task_runtime import DenseInfo, TaskRuntime
  space, model, v, data = tiny_depth
  info = DenseInfo(name="synthetic", image_shape=(32, 32, 3), num_classes=0, split_sizes={},
                   max_depth=10.0, min_depth=1e-3, ignore_label=255)
  rt0 = TaskRuntime("depth", get_task("depth", min_depth=1e-3, max_depth=10.0), info, {})
  genome = np.stack([np.asarray(space.encode(a), np.int32) for a in (space.largest(), space.smallest())])
  scores = {}
  for on in (False, True):
    cfg = ml_collections.ConfigDict({"evaluator": {"depth_flip_tta": on}})
    rt = with_depth_flip_tta(rt0, cfg)
    assert rt.task.flip_tta is on
    ev = dmmpe.make_evaluator("dmmpe", model, v, space, data=data, rt=rt,
                              devices=jax.devices()[:1], group_size=1)
    scores[on] = np.asarray(ev.evaluate(genome))
    for i in range(len(genome)):
      np.testing.assert_allclose(scores[on][i], _reference_abs_rel(space, model, v, data, genome[i], on),
                                 rtol=1e-5)
  assert np.all(np.abs(scores[True] - scores[False]) > 1e-4), scores
  print("AbsRel without / with flip TTA:", scores[False], scores[True])
  # The search default is TTA on; a non-bool value is refused naming the field.
  assert with_depth_flip_tta(rt0, ml_collections.ConfigDict({"evaluator": {}})).task.flip_tta
  from helpers import load_config
  c = load_config("search_dense")
  assert c.evaluator.depth_flip_tta is True
  validate_config(c)
  c.evaluator = ml_collections.ConfigDict({**c.evaluator.to_dict(), "depth_flip_tta": 1})
  with pytest.raises(ValueError, match="depth_flip_tta"):
    validate_config(c)
