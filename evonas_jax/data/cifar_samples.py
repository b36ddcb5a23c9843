"""The 20 real CIFAR-10 test images shipped in PyPI `foolbox==3.3.4` (its data/ folder), read
without importing foolbox (which needs eagerpy), plus TFDS cifar10 when a user has it prepared.

Install: `pip install --no-deps foolbox==3.3.4` (the `proxies` extra). File names are
`cifar10_{index:02d}_{label}.png`: the first 20 CIFAR-10 test images.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import site
import sys

import numpy as np

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def foolbox_data_dir(path: str | None = None) -> str:
  """The foolbox package's data folder: `path` if given, else found via importlib (no import)
  or a scan of site-packages."""
  cands = []
  if path:
    cands.append(path)
  spec = importlib.util.find_spec("foolbox")
  if spec is not None and spec.submodule_search_locations:
    cands += [os.path.join(p, "data") for p in spec.submodule_search_locations]
  for sp in list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path:
    cands.append(os.path.join(sp, "foolbox", "data"))
  for c in cands:
    if c and glob.glob(os.path.join(c, "cifar10_*.png")):
      return c
  raise FileNotFoundError(
      "foolbox CIFAR-10 samples not found: `pip install --no-deps foolbox==3.3.4` (extra "
      f"'proxies') or set data.foolbox_dir to its data/ folder (tried {cands[:3]}...)")


def load_foolbox_cifar10(path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """-> images (20, 32, 32, 3) uint8, labels (20,) int32, in file-index order."""
  from PIL import Image
  d = foolbox_data_dir(path)
  files = sorted(glob.glob(os.path.join(d, "cifar10_*.png")),
                 key=lambda f: int(os.path.basename(f).split("_")[1]))
  images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
  labels = np.array([int(os.path.basename(f).rsplit("_", 1)[1][:-4]) for f in files], np.int32)
  return images, labels


def load_tfds_cifar10(num: int, data_dir: str | None = None, split: str = "train"):
  """First `num` images of a locally prepared TFDS cifar10 (no download)."""
  import tensorflow_datasets as tfds
  src = tfds.data_source("cifar10", split=split, data_dir=data_dir, download=False)
  items = [src[i] for i in range(min(num, len(src)))]
  return (np.stack([it["image"] for it in items]).astype(np.uint8),
          np.array([it["label"] for it in items], np.int32))


def normalize(images_u8: np.ndarray) -> np.ndarray:
  """uint8 (N, 32, 32, 3) -> float32 standardised with the CIFAR-10 channel mean/std."""
  return ((images_u8.astype(np.float32) / 255.0) - CIFAR10_MEAN) / CIFAR10_STD


def cifar10_batch(source: str = "foolbox", num: int = 20, path: str | None = None) -> dict:
  """{"image": (num, 32, 32, 3) float32 normalised, "label": (num,) int32}."""
  if source == "foolbox":
    x, y = load_foolbox_cifar10(path)
    if num > len(x):
      raise ValueError(f"data.num_images: foolbox ships {len(x)} CIFAR-10 images, asked {num}")
  elif source == "tfds":
    x, y = load_tfds_cifar10(num, path)
  else:
    raise ValueError(f"data.source must be 'foolbox' or 'tfds', got {source!r}")
  return {"image": normalize(x[:num]), "label": y[:num]}
