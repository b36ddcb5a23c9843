"""Dense-prediction heads by name: "depth" and "segmentation".

A head is a linen Module called as head(feats, image_hw, train) -> dict of outputs, where feats
are the four backbone stage maps. `TASK_ARGS` names the task-level fields (num_classes,
max_depth) that `DenseEvoNet` fills in; every other field is the head's config.
"""
from __future__ import annotations

import dataclasses

from evonas_jax.nn.heads.depth import DepthDecoder
from evonas_jax.nn.heads.segmentation import SegmentationHead

HEADS = {"depth": DepthDecoder, "segmentation": SegmentationHead}


def head_config_keys(name: str) -> tuple[str, ...]:
  """The config fields head `name` accepts (its dataclass fields minus linen's own)."""
  cls = head_class(name)
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


def head_class(name: str):
  if name not in HEADS:
    raise ValueError(f"unknown head {name!r}; allowed: {sorted(HEADS)}")
  return HEADS[name]


def get_head(name: str, **cfg):
  """An (unbound) head module: HEADS[name](**cfg). Unknown config keys are refused by name."""
  cls = head_class(name)
  allowed = head_config_keys(name) + ("name",)
  bad = sorted(set(cfg) - set(allowed))
  if bad:
    raise ValueError(f"head {name!r}: unknown config keys {bad}; allowed: {sorted(allowed)}")
  return cls(**cfg)


def register_head(name: str, cls) -> None:
  """Adds a head type (see the module docstring for the calling convention)."""
  if name in HEADS:
    raise ValueError(f"head {name!r} is already registered")
  HEADS[name] = cls
