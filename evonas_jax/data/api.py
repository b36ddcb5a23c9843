"""What the trainer calls: config -> prepared TFDS dataset -> grain iterators.

Every path reads through TFDS: local sources (fashion_mnist, digits) are
converted to a TFDS array_record dataset on first use (`prepare_if_needed`),
so local and external datasets (source="tfds") share one reader and one
pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping

import ml_collections
import numpy as np

from evonas_jax.data import cache as cache_lib
from evonas_jax.data import config as config_lib
from evonas_jax.data import pipeline as pipeline_lib
from evonas_jax.data import sources as sources_lib
from evonas_jax.data import splits as splits_lib
from evonas_jax.data import tfds_prepare
from evonas_jax.data import tfds_source

log = logging.getLogger(__name__)

ConfigLike = Mapping | ml_collections.ConfigDict
# A fallback to digits cannot honour a Fashion-MNIST-sized val_size
# (digits has 1438 training images): use this fraction instead.
FALLBACK_VAL_FRACTION = 0.1
_WAIT_FOR_PRIMARY_S = 3600.0


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model/trainer needs to know about the configured dataset.

    Attributes:
      name: TFDS dataset name that is read (e.g. "evonas_fashion_mnist").
      source: the configured source ("fashion_mnist", "digits" or "tfds").
      num_classes: number of label classes.
      class_names: one name per class.
      image_shape: (H, W, C) of a preprocessed image = (image_size,
        image_size, channels).
      split_sizes: examples per role: "train", "validation", "test" (a role
        whose split does not exist is left out).
      fallback_used: True when digits replaced a missing Fashion-MNIST.
      tfds_data_dir: where the TFDS dataset lives.
      raw_image_shape: stored image shape (None for variable dims).
    """

    name: str
    source: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    split_sizes: dict[str, int]
    fallback_used: bool
    tfds_data_dir: str
    raw_image_shape: tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class _Resolved:
    name: str
    tfds_data_dir: str
    fallback_from: str | None


def get_config_defaults() -> ml_collections.ConfigDict:
    """Default `data` config (Fashion-MNIST); see `evonas_jax.data.config`."""
    return config_lib.get_config_defaults()


def _effective_val_size(spec: config_lib.DataSpec, fallback_from: str | None) -> int | float:
    val = spec.val_size
    if fallback_from and isinstance(val, int) and val >= sources_lib.DIGITS_TRAIN_SIZE // 2:
        log.warning("val_size=%d does not fit the digits fallback (%d train images); using %.0f%% instead.",
                    val, sources_lib.DIGITS_TRAIN_SIZE, 100 * FALLBACK_VAL_FRACTION)
        return FALLBACK_VAL_FRACTION
    return val


def _check_prepared_val_size(tfds_data_dir: str, name: str, source: str, val_size: int | float) -> None:
    """Refuses a prepared dataset whose validation split differs from the config."""
    meta = tfds_prepare.read_metadata(tfds_data_dir, name)
    if "val_size" not in meta:
        return  # Not written by us: nothing to compare.
    import tensorflow_datasets as tfds

    splits = tfds.builder_from_directory(tfds_prepare.prepared_dir(tfds_data_dir, name)).info.splits
    n_train = splits["train"].num_examples + int(meta["val_size"])
    wanted = splits_lib.resolve_holdout_size(val_size, n_train)
    if wanted != int(meta["val_size"]):
        raise ValueError(
            f"data.val_size={val_size!r} ({wanted} examples) does not match the prepared dataset {name!r} in "
            f"{tfds_data_dir}, which has val_size={meta['val_size']}. Either set data.val_size={meta['val_size']}, "
            f"use another data.tfds_data_dir, or rebuild it: "
            f"{tfds_prepare.prepare_command(source, tfds_data_dir)} --val_size {wanted} --overwrite"
        )


def _is_primary_host() -> bool:
    import jax

    return jax.process_index() == 0


def _wait_until_prepared(tfds_data_dir: str, name: str) -> None:
    deadline = time.monotonic() + _WAIT_FOR_PRIMARY_S
    log.info("Waiting for host 0 to prepare %s in %s ...", name, tfds_data_dir)
    while not tfds_prepare.is_prepared(tfds_data_dir, name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"host 0 did not prepare {name} in {tfds_data_dir} within {_WAIT_FOR_PRIMARY_S} s")
        time.sleep(2.0)


@contextlib.contextmanager
def _prepare_lock(tfds_data_dir: str, name: str):
    """Exclusive advisory lock on <tfds_data_dir>/.<name>.prepare.lock (POSIX flock)."""
    import fcntl

    os.makedirs(tfds_data_dir, exist_ok=True)
    with open(os.path.join(tfds_data_dir, f".{name}.prepare.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _resolve(spec: config_lib.DataSpec) -> _Resolved:
    if spec.source == "tfds":
        tfds_source.load_builder(spec.name, spec.tfds_data_dir)  # Early, clear error if not prepared.
        return _Resolved(spec.name, spec.tfds_data_dir, None)
    resolved, fallback_from = sources_lib.resolve_source_name(spec.source, spec.data_dir, spec.allow_fallback)
    name = tfds_prepare.tfds_name_for(resolved)
    val_size = _effective_val_size(spec, fallback_from)
    if not tfds_prepare.is_prepared(spec.tfds_data_dir, name):
        if _is_primary_host():
            # Several processes on one machine (parallel test workers, two jobs started together)
            # may all be "host 0": an exclusive file lock makes one of them write, the others
            # find the finished dataset once they get the lock.
            with _prepare_lock(spec.tfds_data_dir, name):
                if not tfds_prepare.is_prepared(spec.tfds_data_dir, name):
                    log.info("First use of %s: preparing TFDS dataset %s in %s (val_size=%r).",
                             resolved, name, spec.tfds_data_dir, val_size)
                    tfds_prepare.prepare(spec.source, spec.tfds_data_dir, data_dir=spec.data_dir,
                                         val_size=val_size, allow_fallback=spec.allow_fallback)
        else:  # Shared filesystem: one writer, the others wait.
            _wait_until_prepared(spec.tfds_data_dir, name)
    _check_prepared_val_size(spec.tfds_data_dir, name, resolved, val_size)
    return _Resolved(name, spec.tfds_data_dir, fallback_from)


def prepare_if_needed(data_cfg: ConfigLike) -> tuple[str, str]:
    """Makes sure the configured dataset exists as TFDS; returns (name, tfds_data_dir).

    Local sources are prepared on first use (logged); source="tfds" is only
    checked. Raises FileNotFoundError (with the fix) when data is missing and
    ValueError for a bad config.
    """
    r = _resolve(config_lib.validate(data_cfg))
    return r.name, r.tfds_data_dir


def _split_for(spec: config_lib.DataSpec, split: str) -> str:
    """Role names map through the config; anything else is a TFDS split (expression)."""
    roles = {"train": spec.train_split, "val": spec.val_split, "validation": spec.val_split,
             "test": spec.test_split}
    return roles.get(split, split)


def open_split(data_cfg: ConfigLike, split: str) -> tfds_source.TfdsSplit:
    """Opens a split ("train"/"validation"/"test" roles, or a TFDS split) of the configured dataset."""
    spec = config_lib.validate(data_cfg)
    r = _resolve(spec)
    return tfds_source.open_split(r.name, _split_for(spec, split), r.tfds_data_dir,
                                  image_key=spec.image_key, label_key=spec.label_key)


# Decoded-split caches shared by all iterators of a process, so repeated
# evaluations (and restarted train iterators) reuse decoded data.
_CACHES: dict[tuple, cache_lib.CachedArraySource] = {}


def _cached(spec: config_lib.DataSpec, opened: tfds_source.TfdsSplit):
    """The split's source, wrapped in a shared in-RAM cache when it is small enough."""
    nbytes = cache_lib.CachedArraySource.nbytes_for(opened.num_examples, opened.image_shape)
    if nbytes is None or nbytes > spec.cache_max_mb * 2**20 or opened.image_dtype != np.uint8:
        return opened.source
    # The info file's mtime changes when a dataset is re-prepared in place.
    info_file = os.path.join(opened.dataset_dir, "dataset_info.json")
    stamp = os.stat(info_file).st_mtime_ns if os.path.exists(info_file) else 0
    key = (os.path.abspath(opened.dataset_dir), stamp, opened.split, opened.image_key, opened.label_key)
    if key not in _CACHES:
        _CACHES[key] = cache_lib.CachedArraySource(opened.source, opened.image_key, opened.label_key,
                                                   opened.image_shape)
    return _CACHES[key]


def clear_caches() -> None:
    """Drops all in-RAM split caches (e.g. after re-preparing a dataset)."""
    _CACHES.clear()


def dataset_info(data_cfg: ConfigLike) -> DatasetInfo:
    """Describes the configured dataset (prepares it first if needed)."""
    spec = config_lib.validate(data_cfg)
    r = _resolve(spec)
    builder = tfds_source.load_builder(r.name, r.tfds_data_dir)
    info = builder.info
    sizes = {}
    for role, split in (("train", spec.train_split), ("validation", spec.val_split), ("test", spec.test_split)):
        try:
            sizes[role] = int(info.splits[split].num_examples)
        except (KeyError, ValueError):
            log.info("Dataset %s has no split %r (role %s).", r.name, split, role)
    label = info.features[spec.label_key]
    names = tuple(getattr(label, "names", None) or ())
    num_classes = getattr(label, "num_classes", None) or len(names)
    if not num_classes:
        raise ValueError(f"data.label_key={spec.label_key!r} of {r.name!r} is not a ClassLabel; "
                         "cannot tell the number of classes")
    return DatasetInfo(
        name=r.name, source=spec.source, num_classes=int(num_classes),
        class_names=names or tuple(str(i) for i in range(num_classes)),
        image_shape=(spec.image_size, spec.image_size, spec.channels), split_sizes=sizes,
        fallback_used=r.fallback_from is not None, tfds_data_dir=r.tfds_data_dir,
        raw_image_shape=tuple(info.features[spec.image_key].shape),
    )


def train_iterator(
    data_cfg: ConfigLike,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    return_index: bool = False,
) -> pipeline_lib.DataIterator:
    """Infinite augmented training batches of the train split, sharded per host.

    Returns:
      DataIterator of {"image": float32 (B, S, S, C), "label": int32 (B,)} (+ "index" int64
      (B,), positions in the train split, with return_index: what a teacher store is keyed by);
      B = batch_size (per host), S = image_size, C = channels.
    """
    spec = config_lib.validate(data_cfg)
    split = open_split(data_cfg, "train")
    return pipeline_lib.train_iterator(
        _cached(spec, split), spec.preprocessor(), batch_size=batch_size, seed=seed, process_index=process_index,
        process_count=process_count, image_key=spec.image_key, label_key=spec.label_key,
        num_threads=spec.num_threads, prefetch=spec.prefetch, return_index=return_index)


def eval_iterator(
    data_cfg: ConfigLike,
    split: str,
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> pipeline_lib.DataIterator:
    """One unaugmented pass over `split` with a padded last batch.

    Args:
      data_cfg: the data config.
      split: "train", "validation" (or "val"), "test" (mapped through the
        config's *_split names) or any TFDS split expression.
      batch_size: batch size B.
      process_index, process_count: optional host sharding (default: this
        host reads everything).

    Returns:
      DataIterator of {"image": float32 (B, S, S, C), "label": int32 (B,),
      "mask": float32 (B,)}; len() = number of batches.
    """
    spec = config_lib.validate(data_cfg)
    opened = open_split(data_cfg, split)
    return pipeline_lib.eval_iterator(
        _cached(spec, opened), spec.preprocessor(), batch_size=batch_size, process_index=process_index,
        process_count=process_count, image_key=spec.image_key, label_key=spec.label_key,
        num_threads=spec.num_threads, prefetch=spec.prefetch)


def tfds_data_dir_for(data_cfg: ConfigLike) -> str:
    """The TFDS directory a config reads from (after env/home defaults)."""
    return os.fspath(config_lib.validate(data_cfg).tfds_data_dir)
