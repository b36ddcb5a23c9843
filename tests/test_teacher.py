"""ViT teacher (shapes, feature layer, learns on real data, config errors) and the teacher store."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from evonas_jax import data
from evonas_jax import teacher_store as ts
from evonas_jax.data import sources
from evonas_jax.data import tfds_prepare
from evonas_jax.nn.teacher import ViTTeacher, get_config_defaults, teacher_from_config

TINY = dict(patch_size=4, dim=16, depth=2, heads=2, mlp_ratio=2.0)


def _fashion(n):
  """n real Fashion-MNIST training images (normalised, (n, 28, 28, 1)) and labels; digits if absent."""
  try:
    src = sources.load_fashion_mnist()
  except FileNotFoundError:
    src = sources.load_digits()
  images, labels = src.splits["train"]
  x = images[:n].astype(np.float32) / 255.0
  return (x - x.mean()) / x.std(), labels[:n].astype(np.int32)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_teacher_shapes(pool):
  m = ViTTeacher(num_classes=10, pool=pool, **TINY)
  x = jnp.zeros((3, 28, 20, 1))
  v = jax.eval_shape(m.init, jax.random.key(0), x)
  logits, feat = jax.eval_shape(m.apply, v, x)
  assert logits.shape == (3, 10) and feat.shape == (3, 7, 5, 16)
  assert ("cls_token" in v["params"]) == (pool == "cls")
  assert v["params"]["pos_embed"].shape == (1, 35 + (pool == "cls"), 16)
  assert m.grid((28, 20, 1)) == (7, 5)


def test_feature_layer_selects_block_output():
  # The feature of block 0 of a 2-block teacher must equal the last-block feature of a 1-block
  # teacher holding the same first-block weights (an independent way to compute that block's output).
  x = jnp.asarray(_fashion(4)[0])
  deep = ViTTeacher(num_classes=10, feature_layer=0, **TINY)
  v = jax.jit(deep.init)(jax.random.key(1), x)
  f0 = jax.jit(deep.apply)(v, x)[1]
  shallow = ViTTeacher(num_classes=10, feature_layer=-1, **{**TINY, "depth": 1})
  p1 = {k: w for k, w in v["params"].items() if k != "block1"}
  f_ref = jax.jit(shallow.apply)({"params": p1}, x)[1]
  np.testing.assert_allclose(np.asarray(f0), np.asarray(f_ref), rtol=1e-5, atol=1e-5)
  last = ViTTeacher(num_classes=10, feature_layer=-1, **TINY)
  f_last = jax.jit(last.apply)(v, x)[1]
  f_one = jax.jit(ViTTeacher(num_classes=10, feature_layer=1, **TINY).apply)(v, x)[1]
  np.testing.assert_array_equal(np.asarray(f_last), np.asarray(f_one))
  assert np.abs(np.asarray(f_last) - np.asarray(f0)).max() > 1e-3


@pytest.mark.parametrize("patch,convs", [(4, 2), (7, 1), (28, 3)])
def test_conv_stem_shapes(patch, convs):
  """ViT-C stem: one 3x3 stride-2 conv per factor 2 of the patch size, then one conv with the odd
  remainder as kernel and stride (none when the remainder is 1), then a 1x1 projection."""
  m = ViTTeacher(num_classes=10, **{**TINY, "patch_size": patch}, stem="conv")
  x = jnp.zeros((2, 28, 28, 1))
  v = jax.eval_shape(m.init, jax.random.key(0), x)
  logits, feat = jax.eval_shape(m.apply, v, x)
  g = 28 // patch
  assert logits.shape == (2, 10) and feat.shape == (2, g, g, 16)
  stem = v["params"]["conv_stem"]
  assert "patch_embed" not in v["params"]
  assert sorted(k for k in stem if k.startswith("conv")) == [f"conv{i}" for i in range(convs)]
  n_stride2 = {4: 2, 7: 0, 28: 2}[patch]
  for i in range(n_stride2):
    assert stem[f"conv{i}"]["kernel"].shape[:2] == (3, 3)
  if patch % 2:
    assert stem[f"conv{convs - 1}"]["kernel"].shape[:2] == (7, 7)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_teacher_learns_on_fashion_mnist(stem):
  x, y = _fashion(64)
  m = ViTTeacher(num_classes=10, **TINY, stem=stem)
  params = jax.jit(m.init)(jax.random.key(0), x[:1])["params"]
  opt = optax.adam(5e-3)
  state = opt.init(params)

  def ce(params):
    logits, _ = m.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(params, state):
    loss, g = jax.value_and_grad(ce)(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state, loss

  losses = []
  for _ in range(40):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.75 * losses[0], losses


def test_teacher_config_validation():
  m = teacher_from_config(ml_collections.ConfigDict(dict(dim=32, heads=4, depth=3, feature_layer=-2)), 7)
  assert (m.num_classes, m.dim, m.heads, m.depth, m.feature_layer, m.feature_block) == (7, 32, 4, 3, -2, 1)
  assert teacher_from_config(get_config_defaults(), 10).dim == 192
  bad = [({"heads": 5}, "heads=5 must divide teacher.dim=192"),
         ({"feature_layer": 6}, r"teacher.feature_layer=6 .*\[-6, 5\]"),
         ({"pool": "max"}, "teacher.pool='max'"),
         ({"patch_size": 0}, "teacher.patch_size"),
         ({"mlp_ratio": -1.0}, "teacher.mlp_ratio"),
         ({"dropout": 1.0}, "teacher.dropout"),
         ({"stem": "hybrid"}, r"teacher.stem='hybrid' is invalid; allowed: \('patch', 'conv'\)"),
         ({"depht": 3}, r"unknown field\(s\) \['depht'\]")]
  for fields, msg in bad:
    with pytest.raises(ValueError, match=msg):
      teacher_from_config(fields, 10)
  with pytest.raises(ValueError, match="not a multiple of patch_size=4"):
    ViTTeacher(num_classes=10, **TINY).init(jax.random.key(0), jnp.zeros((1, 30, 28, 1)))


# ------------------------------------------------------------------------------ teacher store


def _batches(feats, order, bs, logits=None):
  for i in range(0, len(order), bs):
    idx = order[i:i + bs]
    yield (idx, feats[idx]) if logits is None else (idx, feats[idx], logits[idx])


def test_store_roundtrip_and_refusals(tmp_path):
  rs = np.random.RandomState(0)
  feats = rs.randn(23, 3, 2, 5).astype(np.float32)
  logits = rs.randn(23, 4).astype(np.float32)
  order = rs.permutation(23)  # Written in shuffled order: the store is keyed by index, not position.
  path = str(tmp_path / "store")
  ts.write_store(path, _batches(feats, order, 5, logits), {"num_examples": 23, "teacher": "unit"})
  store = ts.TeacherStore(path)
  assert (store.num_examples, store.feature_shape, store.grid, store.has_logits) == (23, (3, 2, 5), (3, 2), True)
  q = np.array([7, 0, 22, 7, -1])
  got = store.lookup(q)
  np.testing.assert_array_equal(got[:4], feats[q[:4]])
  np.testing.assert_array_equal(got[4], 0.0)  # -1 = padding.
  np.testing.assert_array_equal(store.lookup_logits(q)[:4], logits[q[:4]])
  with pytest.raises(IndexError, match="23 >= num_examples=23"):
    store.lookup([23])
  # Never overwritten.
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    ts.write_store(path, _batches(feats, order, 5), {"num_examples": 23})
  assert json.load(open(os.path.join(path, "meta.json")))["teacher"] == "unit"
  # Incomplete / duplicated / inconsistent input: an error and nothing left behind.
  for it, msg in [(_batches(feats, order[:20], 5), "3 of 23 examples were never written"),
                  (_batches(feats, np.concatenate([order, order[:1]]), 5), "written twice"),
                  (iter([(np.arange(2), feats[:2, :, :, :4]), (np.arange(2, 4), feats[2:4])]), "shape changed")]:
    with pytest.raises(ValueError, match=msg):
      ts.write_store(str(tmp_path / "bad"), it, {"num_examples": 23})
    assert not os.path.exists(tmp_path / "bad")
  assert sorted(os.listdir(tmp_path)) == ["store"]  # No temporary directories left either.
  with pytest.raises(FileNotFoundError, match="not a teacher store"):
    ts.TeacherStore(str(tmp_path))


def test_store_float16(tmp_path):
  feats = np.random.RandomState(1).randn(4, 2, 2, 3).astype(np.float32)
  path = str(tmp_path / "s16")
  ts.write_store(path, _batches(feats, np.arange(4), 3), {"num_examples": 4, "dtype": "float16"})
  got = ts.TeacherStore(path).lookup(np.arange(4))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, feats, rtol=1e-3, atol=1e-3)
  assert not ts.TeacherStore(path).has_logits


def test_compute_store_on_digits(tmp_path):
  root = str(tmp_path / "tfds")
  tfds_prepare.prepare("digits", root, val_size=200)
  cfg = data.get_config_defaults()
  cfg.update(source="digits", tfds_data_dir=root, val_size=200, image_size=8, mean=0.25, std=0.5)
  m = ViTTeacher(num_classes=10, **TINY)
  v = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  path = str(tmp_path / "store")
  ts.compute_store(m.apply, v, cfg, path, batch_size=256, teacher_name="vit-tiny", progress=False)
  store = ts.TeacherStore(path)
  n = data.dataset_info(cfg).split_sizes["train"]
  assert store.num_examples == n and store.feature_shape == (2, 2, 16) and store.has_logits
  # Reference: unaugmented images fetched by index through the data pipeline, teacher run here.
  from evonas_jax.data import config as config_lib
  from evonas_jax.data import pipeline
  spec = config_lib.validate(cfg)
  it = pipeline.eval_iterator(data.open_split(cfg, "train").source, spec.preprocessor(), batch_size=64,
                              return_index=True)
  batch = next(iter(it))
  idx = batch["index"][::-3]  # Out of order on purpose.
  logits, feat = jax.jit(m.apply)(v, batch["image"][::-3])
  np.testing.assert_allclose(store.lookup(idx), np.asarray(feat), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(store.lookup_logits(idx), np.asarray(logits), rtol=1e-5, atol=1e-5)
  # The store refuses augmented training data and other preprocessing.
  with pytest.raises(ValueError, match="unaugmented"):
    store.check_data(cfg)
  cfg.update(crop_padding=0, random_flip=False)
  store.check_data(cfg)
  cfg.mean = 0.3
  with pytest.raises(ValueError, match="mean"):
    store.check_data(cfg)
  with pytest.raises(FileExistsError):
    ts.compute_store(m.apply, v, cfg, path, batch_size=256, progress=False)
