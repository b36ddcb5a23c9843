"""Local raw image-classification sources, loaded as numpy arrays.

Sources:
  * ``fashion_mnist``: the full Fashion-MNIST (60000 train + 10000 test,
    28x28x1, 10 classes) from the IDX files of the Debian package
    ``dataset-fashion-mnist`` (default directory `FASHION_MNIST_DEFAULT_DIR`),
    or any directory holding the four upstream ``*-idx?-ubyte.gz`` files.
  * ``digits``: scikit-learn's bundled ``load_digits`` (1797 images, 8x8x1,
    10 classes). Always present, so it is the fallback. Split into train (1438)
    and test (359) by a fixed-seed stratified split.

Every loader returns a `SourceData` whose splits map a split name to
``(images, labels)``: images uint8 (N, H, W, C), labels int64 (N,).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import textwrap

import numpy as np

from evonas_jax.data import idx as idx_lib
from evonas_jax.data import splits as splits_lib

log = logging.getLogger(__name__)

# Where the Debian package `dataset-fashion-mnist` installs its files.
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGITS_CLASSES = tuple(str(d) for d in range(10))
# digits has no official test split: carve a fixed 20% stratified one.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0
DIGITS_NUM_EXAMPLES = 1797
DIGITS_TRAIN_SIZE = DIGITS_NUM_EXAMPLES - int(round(DIGITS_TEST_FRACTION * DIGITS_NUM_EXAMPLES))  # 1438

LOCAL_SOURCES = ("fashion_mnist", "digits")
FALLBACK_SOURCE = "digits"

_FIX_HINT = (
    "Fix: install the Debian package (`sudo apt-get install dataset-fashion-mnist`, "
    "files land in {default}) or point data_dir / --data_dir at a directory holding {files}."
)


@dataclasses.dataclass(frozen=True)
class SourceData:
    """A local dataset held in memory.

    Attributes:
      name: source name, e.g. "fashion_mnist" or "digits".
      splits: split name -> (images uint8 (N, H, W, C), labels int64 (N,)).
      class_names: one name per class; labels index into it.
      origin: where the data came from (directory or package), for logs.
      fallback_from: the requested source name if this source is a fallback
        for it, else None.
    """

    name: str
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: tuple[str, ...]
    origin: str
    fallback_from: str | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        images, _ = next(iter(self.splits.values()))
        return tuple(images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _as_images(x: np.ndarray, where: str = "images") -> np.ndarray:
    """(N, H, W) or (N, H, W, C) -> uint8 (N, H, W, C).

    Raises ValueError naming `where` for values a uint8 image cannot hold (NaN / inf, outside
    0..255, fractional) instead of wrapping them around silently."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{where}: expected images of rank 3 or 4, got shape {x.shape}")
    if x.dtype != np.uint8 and x.size:
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{where}: {int(np.size(x) - np.isfinite(x).sum())} pixel values are "
                             "NaN or infinite; expected 0..255")
        if x.dtype.kind not in "fiu":
            raise ValueError(f"{where}: pixel dtype {x.dtype} is not numeric")
        if x.min() < 0 or x.max() > 255:
            raise ValueError(f"{where}: pixel values span [{x.min()}, {x.max()}]; expected 0..255")
        if x.dtype.kind == "f" and not np.array_equal(x, np.round(x)):
            raise ValueError(f"{where}: fractional pixel values; expected integers 0..255")
    return np.ascontiguousarray(x, dtype=np.uint8)


def fashion_mnist_missing_files(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Paths of the Fashion-MNIST files that do not exist in `data_dir` (empty if complete)."""
    d = os.fspath(data_dir or FASHION_MNIST_DEFAULT_DIR)
    return [os.path.join(d, f) for pair in FASHION_MNIST_FILES.values() for f in pair
            if not os.path.isfile(os.path.join(d, f))]


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> SourceData:
    """Loads Fashion-MNIST from IDX files.

    Args:
      data_dir: directory with the four ``*-idx?-ubyte.gz`` files; defaults to
        the Debian package's `FASHION_MNIST_DEFAULT_DIR`.

    Returns:
      SourceData with splits "train" (60000, 28, 28, 1) and "test"
      (10000, 28, 28, 1), labels int64 in [0, 10).

    Raises:
      FileNotFoundError: naming the missing files and how to install them.
      ValueError: if a file is corrupt or images and labels disagree in count.
    """
    d = os.fspath(data_dir or FASHION_MNIST_DEFAULT_DIR)
    missing = fashion_mnist_missing_files(d)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {d}: missing {', '.join(os.path.basename(m) for m in missing)}. "
            + _FIX_HINT.format(default=FASHION_MNIST_DEFAULT_DIR,
                               files=", ".join(f for p in FASHION_MNIST_FILES.values() for f in p))
        )
    splits = {}
    for split, (img_file, lbl_file) in FASHION_MNIST_FILES.items():
        images = idx_lib.read_idx(os.path.join(d, img_file))
        labels = idx_lib.read_idx(os.path.join(d, lbl_file))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{d}: {split} images {images.shape} and labels {labels.shape} do not match "
                "(expected (N, H, W) and (N,))"
            )
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{os.path.join(d, lbl_file)}: {split} labels have dtype {labels.dtype}; "
                             "expected integers")
        if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
            raise ValueError(f"{os.path.join(d, lbl_file)}: {split} labels outside "
                             f"[0, {len(FASHION_MNIST_CLASSES)})")
        splits[split] = (_as_images(images, os.path.join(d, img_file)), labels.astype(np.int64))
    return SourceData("fashion_mnist", splits, FASHION_MNIST_CLASSES, origin=d)


def load_digits() -> SourceData:
    """Loads scikit-learn's bundled 8x8 digits (no download).

    Returns:
      SourceData with splits "train" (1438, 8, 8, 1) and "test" (359, 8, 8, 1);
      pixel values 0..16 are scaled to uint8 0..255; the test split is a fixed
      stratified 20% (seed `DIGITS_TEST_SEED`).
    """
    from sklearn import datasets  # Lazy: sklearn import costs ~1 s.

    x, y = datasets.load_digits(return_X_y=True)
    images = np.rint(x.reshape(-1, 8, 8, 1) * (255.0 / 16.0)).astype(np.uint8)
    labels = y.astype(np.int64)
    n_test = splits_lib.resolve_holdout_size(DIGITS_TEST_FRACTION, len(labels), field="digits test fraction")
    train_idx, test_idx = splits_lib.stratified_holdout(labels, n_test, DIGITS_TEST_SEED)
    splits = {"train": (images[train_idx], labels[train_idx]), "test": (images[test_idx], labels[test_idx])}
    return SourceData("digits", splits, DIGITS_CLASSES, origin="sklearn.datasets.load_digits")


def load_source(name: str, data_dir: str | os.PathLike | None = None) -> SourceData:
    """Loads the local source `name` ("fashion_mnist" or "digits")."""
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    if name == "digits":
        return load_digits()
    raise ValueError(f"source must be one of {LOCAL_SOURCES}; got {name!r}")


def warn_loudly(message: str) -> None:
    """Logs a multi-line warning and also prints it to stderr.

    Both, because a silently degraded dataset is the worst failure mode of a
    NAS run: logging may be filtered or redirected, stderr usually is not.
    """
    bar = "!" * 78
    text = f"\n{bar}\n{message}\n{bar}"
    log.warning(text)
    if not _logging_reaches_stderr():  # Avoid printing it twice on the terminal.
        print(text, file=sys.stderr, flush=True)


def _logging_reaches_stderr() -> bool:
    """Whether a WARNING from `log` is already written to sys.stderr by some handler."""
    logger, found_handler = log, False
    while logger is not None:
        for h in logger.handlers:
            found_handler = True
            h = getattr(h, "_current_handler", h)  # absl's ABSLHandler wraps a stream handler.
            if getattr(h, "stream", None) is sys.stderr and h.level <= logging.WARNING:
                return True
        logger = logger.parent if logger.propagate else None
    # No handler at all: logging's last-resort handler writes to stderr.
    return not found_handler and logging.lastResort is not None


# Missing directories already warned about, so a run that opens several
# splits warns once, not once per split.
_WARNED_MISSING: set[str] = set()


def resolve_source_name(
    name: str,
    data_dir: str | os.PathLike | None = None,
    allow_fallback: bool = True,
) -> tuple[str, str | None]:
    """Decides which local source to use, without loading it.

    Returns:
      (source name, requested name if that is a fallback else None). When
      Fashion-MNIST files are missing and `allow_fallback`, returns
      ("digits", "fashion_mnist") after a loud warning (once per directory)
      naming the missing path and the fix.

    Raises:
      FileNotFoundError: Fashion-MNIST is missing and fallback is not allowed
        (the message names the path and the fix).
      ValueError: unknown source name.
    """
    if name not in LOCAL_SOURCES:
        raise ValueError(f"source must be one of {LOCAL_SOURCES}; got {name!r}")
    if name != "fashion_mnist":
        return name, None
    missing = fashion_mnist_missing_files(data_dir)
    if not missing:
        return name, None
    d = os.fspath(data_dir or FASHION_MNIST_DEFAULT_DIR)
    files = ", ".join(f for p in FASHION_MNIST_FILES.values() for f in p)
    if not allow_fallback:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {d}: missing {', '.join(os.path.basename(m) for m in missing)}. "
            + _FIX_HINT.format(default=FASHION_MNIST_DEFAULT_DIR, files=files)
            + " (allow_fallback=False, so no fallback to digits.)"
        )
    if d not in _WARNED_MISSING:
        _WARNED_MISSING.add(d)
        warn_loudly(
            "DATASET FALLBACK: Fashion-MNIST was requested but its files are missing:\n"
            + "".join(f"    {m}\n" for m in missing)
            + "Using scikit-learn's 8x8 `digits` (1797 images) INSTEAD. Results are NOT\n"
            "comparable with Fashion-MNIST runs.\n"
            + "\n".join(textwrap.wrap(_FIX_HINT.format(default=FASHION_MNIST_DEFAULT_DIR, files=files), 78,
                                      break_on_hyphens=False))
            + "\nSet allow_fallback=False to make this an error instead."
        )
    return FALLBACK_SOURCE, name


def resolve_source(
    name: str,
    data_dir: str | os.PathLike | None = None,
    allow_fallback: bool = True,
) -> SourceData:
    """Loads `name`, falling back to digits when Fashion-MNIST is missing.

    Args:
      name: "fashion_mnist" or "digits".
      data_dir: Fashion-MNIST directory (None: the Debian default).
      allow_fallback: if False, missing Fashion-MNIST files raise.

    Returns:
      The requested SourceData, or digits with ``fallback_from="fashion_mnist"``
      after a loud warning naming the missing path and the fix.

    Raises:
      FileNotFoundError: Fashion-MNIST is missing and fallback is not allowed.
    """
    resolved, fallback_from = resolve_source_name(name, data_dir, allow_fallback)
    data = load_source(resolved, data_dir)
    return dataclasses.replace(data, fallback_from=fallback_from) if fallback_from else data


def with_validation_split(
    data: SourceData,
    val_size: int | float,
    *,
    seed: int = splits_lib.VAL_SPLIT_SEED,
    val_split: str = "validation",
) -> SourceData:
    """Carves a deterministic stratified validation split out of "train".

    Args:
      data: a SourceData with a "train" split.
      val_size: number of validation examples, or a fraction in (0, 1); 0 adds
        no validation split.
      seed: permutation seed; the default is fixed so the split never changes.
      val_split: name of the new split.

    Returns:
      A SourceData whose "train" lost exactly the examples now in `val_split`
      (disjoint; both keep the original relative order).
    """
    images, labels = data.splits["train"]
    k = splits_lib.resolve_holdout_size(val_size, len(labels))
    if k == 0:
        return data
    keep, hold = splits_lib.stratified_holdout(labels, k, seed)
    new = dict(data.splits)
    new["train"] = (images[keep], labels[keep])
    new[val_split] = (images[hold], labels[hold])
    return dataclasses.replace(data, splits=new)
