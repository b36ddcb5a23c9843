"""Random-access reading of any prepared TFDS dataset (array_record/parquet).

Works for datasets prepared by `evonas_jax.prepare` (``evonas_*``) and for
any other TFDS dataset prepared with ``file_format=array_record`` (e.g.
``imagenet2012`` or ``cifar10`` built by ``tfds build ... --file_format
array_record``). No TensorFlow is needed: the builder is restored from the
dataset's files (`read_only_builder.builder_from_files`), never from the TFDS
catalog code, so nothing is downloaded or generated here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from evonas_jax.data import tfds_prepare

# File formats with random access (tfrecord has none).
_RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """One split of a prepared TFDS dataset.

    Attributes:
      source: random-access data source: ``len(source)``, ``source[i]`` and
        ``source.__getitems__(indices)`` give dicts of numpy arrays; the image
        under `image_key` is uint8 (H, W, C) (or (H, W)), the label an int.
      name, split, data_dir: what was opened.
      image_key, label_key: feature keys of the image and the label.
      num_examples: len(source).
      image_shape: the image feature's shape, None for unknown dims
        (e.g. (None, None, 3) for ImageNet).
      image_dtype: numpy dtype of the decoded image.
      dataset_dir: the versioned directory holding the files.
      class_names: label names if the label is a ClassLabel with names.
      num_classes: number of classes if known.
      metadata: the dataset's TFDS metadata dict (may be empty).
    """

    source: Any
    name: str
    split: str
    data_dir: str
    image_key: str
    label_key: str
    num_examples: int
    image_shape: tuple[int | None, ...]
    image_dtype: Any
    dataset_dir: str
    class_names: tuple[str, ...] | None
    num_classes: int | None
    metadata: dict


def _not_prepared_message(name: str, data_dir: str) -> str:
    local = {v: k for k, v in tfds_prepare.PREPARED_NAMES.items()}
    if name in local:
        fix = f"Prepare it with: {tfds_prepare.prepare_command(local[name], data_dir)}"
    else:
        fix = (
            f"Prepare it in array_record format, e.g. `tfds build {name} --data_dir {data_dir} "
            "--file_format array_record` (TFDS's own builders usually need TensorFlow to generate data), "
            "or point tfds_data_dir at the directory that holds it."
        )
    return f"TFDS dataset {name!r} is not prepared in {data_dir} (no {name}/<version>/dataset_info.json). {fix}"


def load_builder(name: str, data_dir: str | os.PathLike):
    """Restores the read-only TFDS builder of prepared dataset `name`.

    Args:
      name: dataset name, optionally with config/version (``name/config:1.0.0``).
      data_dir: the TFDS data directory that holds ``<name>/...``.

    Raises:
      FileNotFoundError: the dataset is not prepared there (with the fix).
    """
    from tensorflow_datasets.core import read_only_builder
    from tensorflow_datasets.core import registered

    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(_not_prepared_message(name, data_dir))
    try:
        return read_only_builder.builder_from_files(name, data_dir=data_dir)
    except registered.DatasetNotFoundError:
        raise FileNotFoundError(_not_prepared_message(name, data_dir)) from None
    except Exception as e:  # noqa: BLE001 - TFDS / protobuf / json errors name no file
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(
            f"TFDS dataset {name!r} in {data_dir}: its metadata ({name}/<version>/dataset_info.json, "
            f"features.json, metadata.json) is unreadable or corrupt ({type(e).__name__}: {first}). "
            "Prepare it again (evonas_jax.prepare --overwrite) or point tfds_data_dir elsewhere."
        ) from None


class _CheckedSource:
    """A TFDS data source whose read errors (a truncated / corrupt array_record file: a
    RuntimeError from the C++ reader) name the dataset directory and the split."""

    def __init__(self, source, where: str):
        self._src = source
        self._where = where

    def __len__(self):
        return len(self._src)

    def _fail(self, e):
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return ValueError(f"{self._where}: a data file is unreadable or corrupt ({type(e).__name__}: "
                          f"{first}). Prepare the dataset again (evonas_jax.prepare --overwrite).")

    def __getitem__(self, i):
        try:
            return self._src[i]
        except (RuntimeError, OSError, ValueError) as e:
            raise self._fail(e) from None

    def __getitems__(self, keys):
        try:
            return self._src.__getitems__(keys)
        except (RuntimeError, OSError, ValueError) as e:
            raise self._fail(e) from None

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_src", "_where"):
            raise AttributeError(name)
        return getattr(self._src, name)


def _check_split(builder, name: str, split: str) -> None:
    available = sorted(builder.info.splits.keys())
    # Plain split names are checked here for a clear message; expressions such
    # as "train[:90%]" or "train+test" are validated by TFDS itself.
    if any(c in split for c in "[+"):
        return
    if split not in available:
        raise ValueError(f"Split {split!r} not found in TFDS dataset {name!r}; available splits: {available}.")


def open_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike,
    *,
    image_key: str = "image",
    label_key: str = "label",
) -> TfdsSplit:
    """Opens one split of a prepared TFDS dataset for random access.

    Args:
      name: TFDS dataset name (e.g. "evonas_fashion_mnist", "cifar10").
      split: split name or TFDS split expression (e.g. "train[:90%]").
      data_dir: the TFDS data directory.
      image_key: feature key of the image.
      label_key: feature key of the integer label.

    Raises:
      FileNotFoundError: the dataset is not prepared (message has the fix).
      ValueError: unknown split (lists the available ones), unknown feature
        keys, or a file format without random access (tfrecord).
    """
    builder = load_builder(name, data_dir)
    info = builder.info
    fmt = info.file_format.value if info.file_format is not None else "tfrecord"
    if fmt not in _RANDOM_ACCESS_FORMATS:
        raise ValueError(
            f"TFDS dataset {name!r} in {os.fspath(data_dir)} is stored as {fmt}, which has no random access. "
            f"Re-prepare it with file_format='array_record'."
        )
    _check_split(builder, name, split)
    features = info.features
    for field, key in (("image_key", image_key), ("label_key", label_key)):
        if key not in features:
            raise ValueError(f"{field}={key!r} is not a feature of {name!r}; features: {sorted(features.keys())}.")
    where = f"TFDS dataset {name!r} split {split!r} in {os.fspath(builder.data_dir)}"
    try:
        source = builder.as_data_source(split=split)
    except ValueError as e:  # Bad split expression: add the available splits.
        raise ValueError(f"{e} (TFDS dataset {name!r}; available splits: {sorted(info.splits.keys())})") from e
    except (RuntimeError, OSError) as e:  # a truncated / corrupt / missing data file
        raise _CheckedSource(None, where)._fail(e) from None
    source = _CheckedSource(source, where)
    label_feature = features[label_key]
    names = tuple(getattr(label_feature, "names", None) or ()) or None
    num_classes = getattr(label_feature, "num_classes", None)
    try:
        metadata = dict(info.metadata or {})
    except (ValueError, OSError, TypeError) as e:  # metadata.json is read lazily, here
        raise ValueError(f"{where}: metadata.json is unreadable or corrupt ({type(e).__name__}: "
                         f"{str(e)[:200]}). Prepare the dataset again (evonas_jax.prepare --overwrite).") from None
    return TfdsSplit(
        source=source,
        name=name,
        split=split,
        data_dir=os.fspath(data_dir),
        image_key=image_key,
        label_key=label_key,
        num_examples=len(source),
        image_shape=tuple(features[image_key].shape),
        image_dtype=getattr(features[image_key], "np_dtype", None),
        dataset_dir=os.fspath(builder.data_dir),
        class_names=names,
        num_classes=num_classes,
        metadata=metadata,
    )
