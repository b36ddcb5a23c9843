"""Converts a local `SourceData` into a TFDS dataset in array_record format.

Prepared dataset names (chosen not to collide with TFDS's catalog names):

  ==================  =========================  ================================
  local source        TFDS name                  splits
  ==================  =========================  ================================
  fashion_mnist       ``evonas_fashion_mnist``   train / validation / test
  digits              ``evonas_digits``          train / validation / test
  ==================  =========================  ================================

Layout: ``<tfds_data_dir>/<name>/1.0.0/`` with ``dataset_info.json``,
``features.json`` and ``<name>-<split>.array_record-*`` shards. Features:
``image`` = Tensor uint8 (H, W, C), ``label`` = ClassLabel with the class
names. Examples keep the source order (shuffling is disabled on write), so
example i of a split is row i of the source arrays.

Writing and reading need no TensorFlow: array_record + Tensor features is the
TF-free path of tensorflow-datasets (research/jaxstack.md §7). Read it back
with ``tfds.data_source(name, split=..., data_dir=tfds_data_dir)`` or
`evonas_jax.data.tfds_source.open_split`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import types

import numpy as np

from evonas_jax.data import sources as sources_lib
from evonas_jax.data import splits as splits_lib

log = logging.getLogger(__name__)

VERSION = "1.0.0"
PREPARED_NAMES = {"fashion_mnist": "evonas_fashion_mnist", "digits": "evonas_digits"}
# Key of our provenance record inside the TFDS metadata.
METADATA_KEY = "evonas"


def tfds_name_for(source: str) -> str:
    """TFDS dataset name for a local source ("fashion_mnist" -> "evonas_fashion_mnist")."""
    try:
        return PREPARED_NAMES[source]
    except KeyError:
        raise ValueError(f"source must be one of {tuple(PREPARED_NAMES)}; got {source!r}") from None


def prepared_dir(tfds_data_dir: str | os.PathLike, name: str) -> str:
    """Directory of the prepared dataset: <tfds_data_dir>/<name>/<VERSION>."""
    return os.path.join(os.fspath(tfds_data_dir), name, VERSION)


def is_prepared(tfds_data_dir: str | os.PathLike, name: str) -> bool:
    """True when a finished dataset exists (TFDS writes dataset_info.json last, via rename)."""
    return os.path.isfile(os.path.join(prepared_dir(tfds_data_dir, name), "dataset_info.json"))


def read_metadata(tfds_data_dir: str | os.PathLike, name: str) -> dict:
    """Our provenance record (source, val_size, seed, ...) of a prepared dataset, or {}."""
    import tensorflow_datasets as tfds

    info = tfds.builder_from_directory(prepared_dir(tfds_data_dir, name)).info
    return dict((info.metadata or {}).get(METADATA_KEY, {}))


def prepare_command(source: str, tfds_data_dir: str | os.PathLike | None = None) -> str:
    """The shell command that prepares `source` (for error messages)."""
    cmd = f"python -m evonas_jax.prepare --source {source}"
    return cmd + (f" --tfds_data_dir {os.fspath(tfds_data_dir)}" if tfds_data_dir else "")


def _make_builder_class(name: str, data: sources_lib.SourceData, metadata: dict):
    """Builds a GeneratorBasedBuilder subclass named `name` that writes `data`.

    The class is created per call and not registered in the TFDS catalog
    (skip_registration): readers need no code, only the files, and a
    registered class could be picked by `tfds.builder(name)` and then try to
    "download" data it does not know about.
    """
    import tensorflow_datasets as tfds

    height, width, channels = data.image_shape
    description = (
        f"{data.name} converted by evonas_jax from {data.origin}"
        + (f" (fallback for {data.fallback_from})" if data.fallback_from else "")
        + "."
    )

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(height, width, channels), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(data.class_names)),
            }),
            supervised_keys=("image", "label"),
            # Keep source order: example i of a split == row i of the arrays.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict({METADATA_KEY: metadata}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data is already in memory.
        return {split: self._generate_examples(images, labels)
                for split, (images, labels) in data.splits.items()}

    def _generate_examples(self, images, labels):
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}

    def body(ns):
        ns.update(name=name, VERSION=tfds.core.Version(VERSION), _info=_info,
                  _split_generators=_split_generators, _generate_examples=_generate_examples,
                  __module__=__name__,
                  # No source code dir / URL checksums: TFDS would otherwise look
                  # for checksums.tsv beside this module (and trips over
                  # namespace packages while doing so).
                  code_path=None, url_infos=None)

    cls_name = "".join(p.capitalize() for p in name.split("_"))
    return types.new_class(cls_name, (tfds.core.GeneratorBasedBuilder,), {"skip_registration": True}, body)


def _refuse_overwrite(name: str, out: str, overwrite: bool) -> None:
    if not overwrite:
        raise FileExistsError(
            f"TFDS dataset {name!r} is already prepared at {out}. Refusing to overwrite it: "
            "pass --overwrite (or overwrite=True) to rebuild it, or choose another --tfds_data_dir."
        )


def write_tfds(
    data: sources_lib.SourceData,
    name: str,
    tfds_data_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> str:
    """Writes every split of `data` as TFDS dataset `name` (array_record).

    Args:
      data: the in-memory dataset; images uint8 (N, H, W, C), labels int64 (N,).
      name: TFDS dataset name.
      tfds_data_dir: root directory of TFDS datasets.
      overwrite: replace an existing prepared dataset; otherwise refuse.
      metadata: JSON-serialisable provenance stored under `METADATA_KEY`.

    Returns:
      The prepared dataset directory.

    Raises:
      FileExistsError: the dataset exists and `overwrite` is False.
    """
    import tensorflow_datasets as tfds

    out = prepared_dir(tfds_data_dir, name)
    if os.path.exists(out):
        _refuse_overwrite(name, out, overwrite)
        log.info("Removing existing dataset %s (overwrite=True).", out)
        shutil.rmtree(out)
    os.makedirs(os.fspath(tfds_data_dir), exist_ok=True)
    builder_cls = _make_builder_class(name, data, metadata or {})
    builder = builder_cls(data_dir=os.fspath(tfds_data_dir), file_format="array_record")
    # TFDS creates a "downloads" folder; keep it out of the user's data dir.
    with tempfile.TemporaryDirectory(prefix="evonas_tfds_dl_") as dl_dir:
        builder.download_and_prepare(download_dir=dl_dir)
    return out


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """What `prepare` wrote: TFDS `name` in `tfds_data_dir` (files in `path`)."""

    name: str
    tfds_data_dir: str
    path: str
    split_sizes: dict[str, int]
    source: str
    fallback_from: str | None


def prepare(
    source: str,
    tfds_data_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    val_size: int | float = 5000,
    overwrite: bool = False,
    allow_fallback: bool = False,
) -> PrepareResult:
    """Loads a local source, carves validation out of train, writes TFDS.

    Args:
      source: "fashion_mnist" or "digits".
      tfds_data_dir: where the TFDS dataset goes.
      data_dir: raw source directory (Fashion-MNIST IDX files).
      val_size: validation examples (or fraction in (0, 1)) taken from train
        by a fixed-seed stratified split; 0 writes no validation split.
      overwrite: replace an existing prepared dataset.
      allow_fallback: write digits (as ``evonas_digits``) when Fashion-MNIST
        is missing, after a loud warning; otherwise raise.

    Returns:
      PrepareResult naming the written dataset (the fallback's, if used).

    Raises:
      FileNotFoundError: the source files are missing (and no fallback).
      FileExistsError: already prepared and `overwrite` is False.
    """
    data = sources_lib.resolve_source(source, data_dir, allow_fallback=allow_fallback)
    name = tfds_name_for(data.name)
    out = prepared_dir(tfds_data_dir, name)
    if os.path.exists(out):
        _refuse_overwrite(name, out, overwrite)  # Early: before the slow split + write.
    n_train = len(data.splits["train"][1])
    val_count = splits_lib.resolve_holdout_size(val_size, n_train)
    data = sources_lib.with_validation_split(data, val_count)
    metadata = {
        "source": data.name,
        "requested_source": source,
        "fallback_from": data.fallback_from or "",
        "origin": data.origin,
        "val_size": val_count,
        "val_seed": splits_lib.VAL_SPLIT_SEED,
        "format_version": 1,
    }
    log.info("Writing TFDS dataset %s to %s ...", name, out)
    path = write_tfds(data, name, tfds_data_dir, overwrite=overwrite, metadata=metadata)
    sizes = {split: int(len(labels)) for split, (_, labels) in data.splits.items()}
    log.info("Prepared %s at %s: %s", name, path, sizes)
    return PrepareResult(name=name, tfds_data_dir=os.fspath(tfds_data_dir), path=path,
                         split_sizes=sizes, source=data.name, fallback_from=data.fallback_from)
