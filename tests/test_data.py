"""Tests of evonas_jax.data: sources, TFDS prepare/read, grain pipeline, config API.

All dataset directories live under pytest's tmp_path. The real Fashion-MNIST
test runs only when the files exist (Debian package `dataset-fashion-mnist`,
or a directory named by $EVONAS_FASHION_MNIST_DIR).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct

import numpy as np
import pytest

from evonas_jax import data
from evonas_jax import prepare as prepare_cli
from evonas_jax.data import cache as cache_lib
from evonas_jax.data import config as config_lib
from evonas_jax.data import idx as idx_lib
from evonas_jax.data import pipeline
from evonas_jax.data import preprocess
from evonas_jax.data import sources
from evonas_jax.data import splits
from evonas_jax.data import tfds_prepare
from evonas_jax.data import tfds_source

tfds = pytest.importorskip("tensorflow_datasets")


# --------------------------------------------------------------------------- helpers


def write_idx(path, arr: np.ndarray, code: int = 0x08, compress: bool = True) -> None:
    """Hand-rolled IDX writer (independent of the parser): big-endian header + data."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + np.asarray(arr, dtype=dtype).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def make_fake_fashion_dir(root, n_train=40, n_test=12, seed=0):
    """Writes the four Fashion-MNIST IDX files with random 28x28 content; returns (dir, arrays)."""
    rng = np.random.default_rng(seed)
    d = os.path.join(root, "fmnist")
    os.makedirs(d, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        img_file, lbl_file = sources.FASHION_MNIST_FILES[split]
        write_idx(os.path.join(d, img_file), x)
        write_idx(os.path.join(d, lbl_file), y.astype(np.uint8))
        arrays[split] = (x[..., None], y.astype(np.int64))
    return d, arrays


def normalize(x_uint8, mean, std):
    return ((x_uint8.astype(np.float32) / 255.0) - np.float32(mean)) / np.float32(std)


def take(it, k):
    return [next(it) for _ in range(k)]


def batches_equal(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits_tfds(tmp_path_factory):
    """evonas_digits prepared once (val_size=200) in a module temp dir."""
    root = str(tmp_path_factory.mktemp("tfds"))
    result = tfds_prepare.prepare("digits", root, val_size=200)
    return root, result


@pytest.fixture(scope="module")
def digits_cfg(digits_tfds):
    root, _ = digits_tfds
    cfg = data.get_config_defaults()
    cfg.source = "digits"
    cfg.tfds_data_dir = root
    cfg.val_size = 200
    cfg.image_size = 8
    cfg.crop_padding = 0
    cfg.random_flip = False
    cfg.mean, cfg.std = 0.25, 0.5
    return cfg


@pytest.fixture(scope="module")
def digits_train_source(digits_tfds):
    root, _ = digits_tfds
    return tfds.data_source("evonas_digits", split="train", data_dir=root)


@pytest.fixture(scope="module")
def digits_arrays():
    return sources.with_validation_split(sources.load_digits(), 200)


# --------------------------------------------------------------------------- IDX + sources


def test_idx_parser_matches_hand_written_files(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    write_idx(tmp_path / "imgs.gz", imgs)
    np.testing.assert_array_equal(idx_lib.read_idx(tmp_path / "imgs.gz"), imgs)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    write_idx(tmp_path / "labels", labels, compress=False)  # Plain (not gzip) also works.
    out = idx_lib.read_idx(tmp_path / "labels")
    assert out.shape == (5,) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)
    ints = np.array([[-2, 70000], [5, -1]], np.int32)
    write_idx(tmp_path / "ints.gz", ints, code=0x0C)
    out = idx_lib.read_idx(tmp_path / "ints.gz")
    assert out.dtype == np.int32 and out.dtype.byteorder in "=|"
    np.testing.assert_array_equal(out, ints)


def test_idx_parser_rejects_corrupt_data(tmp_path):
    good = struct.pack(">BBBBI", 0, 0, 0x08, 1, 4) + bytes(4)
    assert idx_lib.parse_idx(good).shape == (4,)
    with pytest.raises(ValueError, match="payload"):
        idx_lib.parse_idx(good[:-1])
    with pytest.raises(ValueError, match="first two bytes"):
        idx_lib.parse_idx(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="type code"):
        idx_lib.parse_idx(struct.pack(">BBBBI", 0, 0, 0x07, 1, 4) + bytes(4))
    (tmp_path / "bad.gz").write_bytes(gzip.compress(good[:-2]))
    with pytest.raises(ValueError, match="bad.gz"):
        idx_lib.read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_loader_on_fake_idx_dir(tmp_path):
    d, arrays = make_fake_fashion_dir(str(tmp_path))
    src = sources.load_fashion_mnist(d)
    assert src.name == "fashion_mnist" and src.class_names == sources.FASHION_MNIST_CLASSES
    for split in ("train", "test"):
        x, y = src.splits[split]
        assert x.dtype == np.uint8 and x.shape == arrays[split][0].shape and x.shape[1:] == (28, 28, 1)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, arrays[split][0])
        np.testing.assert_array_equal(y, arrays[split][1])


def _real_fashion_dir():
    for d in (os.environ.get("EVONAS_FASHION_MNIST_DIR"), sources.FASHION_MNIST_DEFAULT_DIR):
        if d and not sources.fashion_mnist_missing_files(d):
            return d
    return None


@pytest.mark.skipif(_real_fashion_dir() is None, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    src = sources.load_fashion_mnist(_real_fashion_dir())
    (xtr, ytr), (xte, yte) = src.splits["train"], src.splits["test"]
    assert xtr.shape == (60000, 28, 28, 1) and xte.shape == (10000, 28, 28, 1)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ytr), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yte), [1000] * 10)
    assert 0.27 < xtr.mean() / 255 < 0.30  # Matches the default normalisation mean 0.2860.


def test_digits_source():
    src = sources.load_digits()
    (xtr, ytr), (xte, yte) = src.splits["train"], src.splits["test"]
    assert xtr.shape == (1438, 8, 8, 1) and xte.shape == (359, 8, 8, 1)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    assert xtr.max() == 255 and xtr.min() == 0
    assert set(np.unique(ytr)) == set(range(10)) == set(np.unique(yte))
    assert src.class_names == tuple("0123456789") and src.image_shape == (8, 8, 1)
    again = sources.load_digits()  # Deterministic split.
    np.testing.assert_array_equal(again.splits["test"][1], yte)
    np.testing.assert_array_equal(again.splits["test"][0], xte)


def test_validation_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    np.random.default_rng(0).shuffle(labels)
    keep, hold = splits.stratified_holdout(labels, 100, seed=3)
    keep2, hold2 = splits.stratified_holdout(labels, 100, seed=3)
    np.testing.assert_array_equal(hold, hold2)
    np.testing.assert_array_equal(keep, keep2)
    assert len(hold) == 100 and len(np.intersect1d(keep, hold)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([keep, hold])), np.arange(500))
    np.testing.assert_array_equal(np.bincount(labels[hold]), [10] * 10)  # Stratified.
    _, hold3 = splits.stratified_holdout(labels, 100, seed=4)
    assert not np.array_equal(hold, hold3)

    src = sources.load_digits()
    a = sources.with_validation_split(src, 0.1)
    b = sources.with_validation_split(src, 144)
    assert len(a.splits["validation"][1]) == 144
    np.testing.assert_array_equal(a.splits["validation"][0], b.splits["validation"][0])
    # Train and validation images are disjoint rows of the original train split.
    xtr = src.splits["train"][0].reshape(len(src.splits["train"][0]), -1)
    rows = {r.tobytes(): i for i, r in enumerate(xtr)}
    ids_val = {rows[r.tobytes()] for r in a.splits["validation"][0].reshape(144, -1)}
    ids_tr = {rows[r.tobytes()] for r in a.splits["train"][0].reshape(len(a.splits["train"][0]), -1)}
    assert not ids_val & ids_tr and len(a.splits["train"][1]) + 144 == len(src.splits["train"][1])
    with pytest.raises(ValueError, match="val_size"):
        sources.with_validation_split(src, 5000)
    with pytest.raises(ValueError, match="val_size"):
        sources.with_validation_split(src, -1)


def test_resolver_falls_back_loudly(tmp_path, capsys, caplog):
    missing = str(tmp_path / "no_fashion_here")
    with caplog.at_level(logging.WARNING):
        src = sources.resolve_source("fashion_mnist", missing, allow_fallback=True)
    assert src.name == "digits" and src.fallback_from == "fashion_mnist"
    err = capsys.readouterr().err
    for text in (missing, "apt-get install dataset-fashion-mnist", "data_dir", "digits"):
        assert text in err and text in caplog.text
    assert err.count("\n") >= 5  # Multi-line.


def test_resolver_without_fallback_raises(tmp_path):
    missing = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError) as e:
        sources.resolve_source("fashion_mnist", missing, allow_fallback=False)
    assert missing in str(e.value) and "apt-get install dataset-fashion-mnist" in str(e.value)
    with pytest.raises(ValueError, match="source"):
        sources.resolve_source("mnist")


# --------------------------------------------------------------------------- TFDS prepare / read


def test_prepare_round_trip_is_exact(digits_tfds, digits_arrays):
    root, result = digits_tfds
    assert result.name == "evonas_digits"
    assert result.split_sizes == {"train": 1238, "validation": 200, "test": 359}
    for split, (x, y) in digits_arrays.splits.items():
        ds = tfds.data_source("evonas_digits", split=split, data_dir=root)
        recs = ds.__getitems__(list(range(len(ds))))
        np.testing.assert_array_equal(np.stack([r["image"] for r in recs]), x)
        np.testing.assert_array_equal(np.array([r["label"] for r in recs]), y)
    builder = tfds.builder_from_directory(tfds_prepare.prepared_dir(root, "evonas_digits"))
    assert builder.info.features["label"].names == list("0123456789")
    assert builder.info.features["image"].shape == (8, 8, 1)
    assert tfds_prepare.read_metadata(root, "evonas_digits")["val_size"] == 200


def test_prepare_fashion_from_idx_and_refuse_overwrite(tmp_path, capsys):
    d, arrays = make_fake_fashion_dir(str(tmp_path), n_train=30, n_test=10)
    out = str(tmp_path / "tfds")
    argv = ["--source", "fashion_mnist", "--data_dir", d, "--tfds_data_dir", out, "--val_size", "10"]
    assert prepare_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert tfds_prepare.prepared_dir(out, "evonas_fashion_mnist") in printed
    ds = tfds.data_source("evonas_fashion_mnist", split="validation", data_dir=out)
    assert len(ds) == 10
    assert tfds.data_source("evonas_fashion_mnist", split="test", data_dir=out)[3]["image"].tobytes() == \
        arrays["test"][0][3].tobytes()
    # Second run refuses, with a clear message; --overwrite rebuilds.
    assert prepare_cli.main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="overwrite"):
        tfds_prepare.prepare("fashion_mnist", out, data_dir=d, val_size=10)
    assert prepare_cli.main(argv[:-1] + ["5", "--overwrite"]) == 0
    assert len(tfds.data_source("evonas_fashion_mnist", split="validation", data_dir=out)) == 5
    # Missing raw files: the CLI fails (no silent fallback) and names the fix.
    assert prepare_cli.main(["--source", "fashion_mnist", "--data_dir", str(tmp_path / "x"),
                             "--tfds_data_dir", out, "--overwrite"]) == 1
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_tfds_source_errors(digits_tfds, tmp_path):
    root, _ = digits_tfds
    with pytest.raises(FileNotFoundError, match="python -m evonas_jax.prepare --source digits"):
        tfds_source.open_split("evonas_digits", "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        tfds_source.open_split("cifar10", "train", root)
    with pytest.raises(ValueError, match=r"available splits: \['test', 'train', 'validation'\]"):
        tfds_source.open_split("evonas_digits", "valid", root)
    with pytest.raises(ValueError, match="image_key"):
        tfds_source.open_split("evonas_digits", "train", root, image_key="img")
    sl = tfds_source.open_split("evonas_digits", "train[:10]", root)  # Split expressions work.
    assert sl.num_examples == 10 and sl.num_classes == 10 and sl.image_shape == (8, 8, 1)


# --------------------------------------------------------------------------- pipeline


def _pre(**kw):
    args = dict(image_size=8, channels=1, crop_padding=0, random_flip=False, mean=(0.25,), std=(0.5,))
    args.update(kw)
    return preprocess.Preprocessor(**args)


def _train(source, pre=None, **kw):
    args = dict(batch_size=32, seed=0, process_index=0, process_count=1, num_threads=0, return_index=True)
    args.update(kw)
    return pipeline.train_iterator(source, pre or _pre(), **args)


def test_train_iterator_determinism_by_seed(digits_train_source):
    pre = _pre(crop_padding=2, random_flip=True)
    a = take(_train(digits_train_source, pre, seed=7), 5)
    b = take(_train(digits_train_source, pre, seed=7, num_threads=2), 5)
    c = take(_train(digits_train_source, pre, seed=8), 5)
    assert batches_equal(a, b)
    assert not np.array_equal(a[0]["index"], c[0]["index"])
    for batch in a:
        assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32


def test_train_epochs_are_reshuffled_permutations(digits_train_source):
    n = len(digits_train_source)  # 1238
    it = _train(digits_train_source, batch_size=50)
    idx = np.concatenate([b["index"] for b in take(it, (2 * n) // 50 + 1)])
    e0, e1 = idx[:n], idx[n:2 * n]
    np.testing.assert_array_equal(np.sort(e0), np.arange(n))
    np.testing.assert_array_equal(np.sort(e1), np.arange(n))
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, np.arange(n))


def test_per_host_shards_are_disjoint_and_cover(digits_train_source):
    n, hosts, bs = len(digits_train_source), 3, 16
    seen = []
    for pi in range(hosts):
        it = _train(digits_train_source, batch_size=bs, process_index=pi, process_count=hosts)
        n_local = it.num_examples
        idx = np.concatenate([b["index"] for b in take(it, n_local // bs + 1)])[:n_local]
        assert len(set(idx)) == n_local  # One epoch of this host: no repeats.
        np.testing.assert_array_equal(np.sort(idx), np.arange(pi, n, hosts))
        seen.append(set(idx.tolist()))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert set().union(*seen) == set(range(n))


def test_checkpointed_state_resumes_same_batches(digits_train_source):
    pre = _pre(crop_padding=1, random_flip=True)
    ref = _train(digits_train_source, pre, seed=3, num_threads=2)
    take(ref, 45)  # Past the first epoch (1238 / 32 = 38 batches).
    state = json.loads(json.dumps(ref.get_state()))
    expected = take(ref, 6)
    restored = _train(digits_train_source, pre, seed=3, num_threads=0)
    restored.set_state(state)
    assert batches_equal(take(restored, 6), expected)
    other = _train(digits_train_source, pre, seed=4)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_in_memory_cache_gives_identical_batches(digits_train_source):
    pre = _pre(crop_padding=1, random_flip=True)
    cached = cache_lib.CachedArraySource(digits_train_source, "image", "label", (8, 8, 1))
    n_batches = 2 * len(digits_train_source) // 32 + 2  # Two epochs: cache fill, then hits.
    a = take(_train(digits_train_source, pre, seed=5), n_batches)
    b = take(_train(cached, pre, seed=5, num_threads=2), n_batches)
    assert batches_equal(a, b) and cached.filled.all()


def test_variable_size_rgb_images_are_resized_and_converted():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (5, 3))
    shapes = [(10, 14), (9, 9), (20, 7), (8, 8), (12, 30)]
    src = [{"image": np.broadcast_to(c, s + (3,)).astype(np.uint8), "label": i}
           for i, (c, s) in enumerate(zip(colours, shapes))]
    b = next(pipeline.eval_iterator(src, _pre(image_size=6, channels=1, mean=(0.0,), std=(1.0,)),
                                    batch_size=8, num_threads=0))
    assert b["image"].shape == (8, 6, 6, 1)
    luma = colours @ np.array([0.299, 0.587, 0.114]) / 255.0  # Constant images stay constant.
    np.testing.assert_allclose(b["image"][:5], np.broadcast_to(luma[:, None, None, None], (5, 6, 6, 1)), atol=1e-5)
    np.testing.assert_array_equal(b["mask"], [1] * 5 + [0] * 3)
    np.testing.assert_array_equal(b["label"][:5], np.arange(5))


def test_eval_covers_every_example_once_with_mask(digits_train_source):
    n, bs = len(digits_train_source), 100
    it = pipeline.eval_iterator(digits_train_source, _pre(), batch_size=bs, num_threads=2, return_index=True)
    batches = list(it)
    assert len(batches) == len(it) == -(-n // bs)
    for b in batches:
        assert b["image"].shape == (bs, 8, 8, 1) and b["mask"].shape == (bs,) and b["mask"].dtype == np.float32
    idx = np.concatenate([b["index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(idx[mask == 1], np.arange(n))
    assert mask.sum() == n and (idx[mask == 0] == -1).all()
    last = batches[-1]
    assert (last["image"][last["mask"] == 0] == 0).all()
    # Multi-host eval: same number of batches everywhere, together exactly once.
    per_host = [list(pipeline.eval_iterator(digits_train_source, _pre(), batch_size=bs, process_index=p,
                                            process_count=3, num_threads=0, return_index=True)) for p in range(3)]
    assert len({len(h) for h in per_host}) == 1
    got = np.concatenate([b["index"][b["mask"] == 1] for h in per_host for b in h])
    np.testing.assert_array_equal(np.sort(got), np.arange(n))


def test_no_augmentation_gives_normalised_source_images(digits_train_source, digits_arrays):
    x, y = digits_arrays.splits["train"]
    for b in take(_train(digits_train_source), 3):
        np.testing.assert_allclose(b["image"], normalize(x[b["index"]], 0.25, 0.5), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(b["label"], y[b["index"]])
    ev = next(pipeline.eval_iterator(digits_train_source, _pre(), batch_size=64, num_threads=0))
    np.testing.assert_allclose(ev["image"], normalize(x[:64], 0.25, 0.5), rtol=0, atol=1e-6)


def test_flip_gives_mirrored_images(digits_train_source, digits_arrays):
    x, _ = digits_arrays.splits["train"]
    flips = 0
    for b in take(_train(digits_train_source, _pre(random_flip=True)), 4):
        plain = normalize(x[b["index"]], 0.25, 0.5)
        mirrored = plain[:, :, ::-1, :]
        is_flip = np.all(np.isclose(b["image"], mirrored, atol=1e-6), axis=(1, 2, 3))
        is_plain = np.all(np.isclose(b["image"], plain, atol=1e-6), axis=(1, 2, 3))
        assert np.all(is_flip | is_plain)
        flips += int(np.sum(is_flip & ~is_plain))
    assert 20 < flips < 108  # About half of 128.


def test_random_crop_is_a_shift_of_the_zero_padded_image(digits_train_source, digits_arrays):
    x, _ = digits_arrays.splits["train"]
    p = 2
    b = next(_train(digits_train_source, _pre(crop_padding=p)))
    offsets = set()
    for img, i in zip(b["image"][:12], b["index"][:12]):
        padded = np.pad(normalize(x[i], 0.0, 1.0), ((p, p), (p, p), (0, 0)))  # Pad in [0, 1] units.
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if np.allclose((padded[dy:dy + 8, dx:dx + 8] - 0.25) / 0.5, img, atol=1e-6)]
        assert found, "crop is not a window of the padded image"
        offsets.add(found[0])
    assert len(offsets) > 1


def test_resize_and_channels_match_jax_image_resize(digits_train_source, digits_arrays):
    import jax

    x, _ = digits_arrays.splits["train"]
    ev = next(pipeline.eval_iterator(digits_train_source, _pre(image_size=20, channels=3, mean=(0.1, 0.2, 0.3),
                                                                std=(0.5, 0.6, 0.7)),
                                     batch_size=16, num_threads=0))
    assert ev["image"].shape == (16, 20, 20, 3)
    ref = np.asarray(jax.image.resize(x[:16].astype(np.float32) / 255.0, (16, 20, 20, 1), "bilinear"))
    ref = (np.repeat(ref, 3, axis=-1) - np.array([0.1, 0.2, 0.3], np.float32)) / np.array([0.5, 0.6, 0.7], np.float32)
    np.testing.assert_allclose(ev["image"], ref, atol=1e-4)
    down = preprocess.resize_bilinear(np.random.default_rng(0).random((2, 28, 28, 1), np.float32), 12, 12)
    np.testing.assert_allclose(
        down, np.asarray(jax.image.resize(np.random.default_rng(0).random((2, 28, 28, 1), np.float32),
                                          (2, 12, 12, 1), "bilinear")), atol=1e-5)


# --------------------------------------------------------------------------- config API


def test_config_defaults_and_validation_errors():
    cfg = data.get_config_defaults()
    for field in ("source", "name", "data_dir", "tfds_data_dir", "val_size", "allow_fallback", "image_size",
                  "channels", "crop_padding", "random_flip", "mean", "std", "image_key", "label_key",
                  "train_split", "val_split", "test_split"):
        assert field in cfg
    spec = config_lib.validate(cfg)
    assert spec.source == "fashion_mnist" and spec.image_size == 28 and spec.mean == (0.286,)
    bad = {
        "source": ("mnist", r"data\.source must be one of \('fashion_mnist', 'digits', 'tfds'\)"),
        "channels": (2, r"data\.channels must be one of \(1, 3\)"),
        "val_size": (-5, r"data\.val_size"),
        "image_size": (0, r"data\.image_size"),
        "crop_padding": (-1, r"data\.crop_padding"),
        "mean": ((0.1, 0.2), r"data\.mean"),
        "std": (0.0, r"data\.std"),
        "random_flip": ("yes", r"data\.random_flip"),
    }
    for field, (value, pattern) in bad.items():
        c = data.get_config_defaults().to_dict()  # A plain dict skips ConfigDict's own type lock.
        c[field] = value
        with pytest.raises(ValueError, match=pattern):
            config_lib.validate(c)
    c = data.get_config_defaults()
    c.source = "tfds"
    with pytest.raises(ValueError, match=r"data\.name"):
        data.prepare_if_needed(c)
    c = data.get_config_defaults()
    c.val_size, c.mean = 0.1, (0.5, 0.5, 0.5)  # Fraction and tuple accepted by the ConfigDict.
    c.channels = 3
    assert config_lib.validate(c).mean == (0.5, 0.5, 0.5)


def test_tfds_dir_default_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(config_lib.TFDS_DIR_ENV, str(tmp_path))
    assert config_lib.validate(data.get_config_defaults()).tfds_data_dir == str(tmp_path)
    monkeypatch.delenv(config_lib.TFDS_DIR_ENV)
    assert config_lib.validate(data.get_config_defaults()).tfds_data_dir.endswith("tensorflow_datasets")


def test_api_end_to_end_on_digits(digits_cfg, digits_arrays):
    name, root = data.prepare_if_needed(digits_cfg)
    assert (name, root) == ("evonas_digits", digits_cfg.tfds_data_dir)
    info = data.dataset_info(digits_cfg)
    assert info.num_classes == 10 and info.image_shape == (8, 8, 1) and not info.fallback_used
    assert info.split_sizes == {"train": 1238, "validation": 200, "test": 359}
    it = data.train_iterator(digits_cfg, batch_size=64, seed=1, process_index=0, process_count=1)
    b = next(it)
    assert b.keys() == {"image", "label"} and b["image"].shape == (64, 8, 8, 1)
    ev = data.eval_iterator(digits_cfg, "validation", 64)
    x, y = digits_arrays.splits["validation"]
    got = list(ev)
    assert len(got) == 4 and sum(g["mask"].sum() for g in got) == 200
    np.testing.assert_allclose(got[0]["image"], normalize(x[:64], 0.25, 0.5), atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([g["label"] for g in got])[:200], y)
    # The same dataset read as an external TFDS dataset.
    cfg = data.get_config_defaults()
    cfg.update(source="tfds", name="evonas_digits", tfds_data_dir=digits_cfg.tfds_data_dir, image_size=8)
    assert data.dataset_info(cfg).split_sizes["test"] == 359
    with pytest.raises(ValueError, match="available splits"):
        data.eval_iterator(cfg, "dev", 8)
    # A val_size that does not match the prepared dataset is refused, not silently reused.
    cfg = digits_cfg.copy_and_resolve_references()
    cfg.val_size = 300
    with pytest.raises(ValueError, match="val_size"):
        data.prepare_if_needed(cfg)


def test_api_prepares_on_first_use_and_falls_back(tmp_path, caplog, capsys):
    cfg = data.get_config_defaults()
    cfg.data_dir = str(tmp_path / "missing_fmnist")
    cfg.tfds_data_dir = str(tmp_path / "tfds")
    with caplog.at_level(logging.INFO):
        info = data.dataset_info(cfg)
    assert info.fallback_used and info.name == "evonas_digits" and info.image_shape == (28, 28, 1)
    assert info.split_sizes["validation"] == 144  # 10% of 1438: 5000 does not fit digits.
    assert "preparing TFDS dataset evonas_digits" in caplog.text
    assert cfg.data_dir in capsys.readouterr().err
    assert tfds_prepare.is_prepared(cfg.tfds_data_dir, "evonas_digits")
    cfg.allow_fallback = False
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.train_iterator(cfg, 8, seed=0, process_index=0, process_count=1)


def test_concurrent_first_use_prepares_once(tmp_path):
  """Two processes opening the same unprepared dataset at once (e.g. parallel test workers) both
  succeed: the file lock in data.api makes one write while the other waits and reuses it."""
  import subprocess
  import sys
  code = ("import sys; from evonas_jax import data; c = data.get_config_defaults(); "
          "c.source = 'digits'; c.image_size = 8; c.val_size = 100; "
          f"c.tfds_data_dir = {str(tmp_path)!r}; print(data.dataset_info(c).split_sizes)")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  sizes = [out.strip().splitlines()[-1] for out, _ in outs]   # TFDS prints progress first
  assert sizes[0] == sizes[1] and "'validation': 100" in sizes[0], sizes
  assert os.path.exists(tmp_path / ".evonas_digits.prepare.lock")
