"""`Arch`: one concrete subnet of a search space, as a frozen, hashable dataclass.

An `Arch` is what every part of the system passes around: the search decodes genomes into it,
the supernet turns it into masks (masked mode) or a static network spec (sliced mode), and
`export` writes it next to the standalone params. It round-trips through JSON exactly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

BLOCK_TYPES = ("vssd", "ss2d", "attention")


def _per_stage(field: str, values, convert) -> tuple:
  """tuple(convert(field[i], v) for v in values), or ValueError naming the field."""
  if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
    raise ValueError(f"Arch.{field} must be a sequence (one entry per stage/block), got "
                     f"{type(values).__name__} {values!r:.100}")
  return tuple(convert(f"{field}[{i}]", v) for i, v in enumerate(values))


def _finite(field: str, v) -> float:
  if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
    raise ValueError(f"Arch.{field} = {v!r:.100} must be a finite number")
  return float(v)


def _integral(field: str, v) -> int:
  if isinstance(v, (numbers.Integral, np.bool_)):
    return int(v)
  if isinstance(v, numbers.Real) and math.isfinite(float(v)) and float(v).is_integer():
    return int(v)
  raise ValueError(f"Arch.{field} = {v!r:.100} must be an integer")


def _text(field: str, v) -> str:
  if not isinstance(v, str):
    raise ValueError(f"Arch.{field} = {v!r:.100} must be one of {BLOCK_TYPES}")
  return v


@dataclasses.dataclass(frozen=True)
class Arch:
  """A subnet: per-stage widths, depth bits and block types.

  Attributes:
    mlp_ratio: per stage, the MLP hidden ratio (hidden = int(dim * ratio)).
    d_state: per stage, the SSM state size N. Ignored by attention stages.
    expand: per stage, the SSM expansion (d_inner = int(dim * expand)). Ignored by attention.
    depth: per stage, a tuple of 0/1 bits, one per supernet block position; a 0 block is skipped.
    block_type: per stage, the mixer of every block of the stage: one of BLOCK_TYPES.
  """
  mlp_ratio: tuple[float, ...]
  d_state: tuple[int, ...]
  expand: tuple[float, ...]
  depth: tuple[tuple[int, ...], ...]
  block_type: tuple[str, ...]

  def __post_init__(self):
    # Normalise containers so equal archs hash equal whatever sequence type they came in. Each
    # value is checked by field name: a bare float()/int()/tuple() would raise a message naming
    # nothing ("could not convert string to float") or silently truncate (int(16.5), int(1.7)).
    object.__setattr__(self, "mlp_ratio", _per_stage("mlp_ratio", self.mlp_ratio, _finite))
    object.__setattr__(self, "d_state", _per_stage("d_state", self.d_state, _integral))
    object.__setattr__(self, "expand", _per_stage("expand", self.expand, _finite))
    object.__setattr__(self, "depth", _per_stage(
        "depth", self.depth, lambda f, s: _per_stage(f, s, _integral)))
    object.__setattr__(self, "block_type", _per_stage("block_type", self.block_type, _text))
    n = len(self.depth)
    for field in ("mlp_ratio", "d_state", "expand", "block_type"):
      if len(getattr(self, field)) != n:
        raise ValueError(f"Arch.{field} has {len(getattr(self, field))} stages, depth has {n}")
    for t in self.block_type:
      if t not in BLOCK_TYPES:
        raise ValueError(f"Arch.block_type {t!r} is not one of {BLOCK_TYPES}")
    for s, bits in enumerate(self.depth):
      if any(b not in (0, 1) for b in bits):
        raise ValueError(f"Arch.depth[{s}] = {bits}: depth bits must be 0 or 1")

  @property
  def num_stages(self) -> int:
    return len(self.depth)

  @property
  def depth_counts(self) -> tuple[int, ...]:
    """Active blocks per stage (what a standalone network keeps)."""
    return tuple(sum(s) for s in self.depth)

  def active_blocks(self, stage: int) -> tuple[int, ...]:
    """Supernet indices of the active blocks of `stage`."""
    return tuple(i for i, b in enumerate(self.depth[stage]) if b)

  def to_dict(self) -> dict[str, Any]:
    return {
        "mlp_ratio": list(self.mlp_ratio),
        "d_state": list(self.d_state),
        "expand": list(self.expand),
        "depth": [list(s) for s in self.depth],
        "block_type": list(self.block_type),
    }

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Arch":
    if not isinstance(d, Mapping):
      raise ValueError(f"Arch dict must be a mapping with fields "
                       f"{[f.name for f in dataclasses.fields(cls)]}, got {type(d).__name__}")
    missing = {f.name for f in dataclasses.fields(cls)} - set(d)
    if missing:
      raise ValueError(f"Arch dict is missing fields {sorted(missing)}")
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_json(cls, s: str) -> "Arch":
    try:
      d = json.loads(s)
    except (TypeError, ValueError) as e:   # JSONDecodeError alone names no field
      raise ValueError(f"Arch JSON is not readable ({e}): {str(s)[:100]!r}") from None
    return cls.from_dict(d)

  def short(self) -> str:
    """A one-line human-readable summary, e.g. for progress output and tables."""
    parts = []
    for s in range(self.num_stages):
      t = self.block_type[s]
      desc = f"{t[:4]}x{self.depth_counts[s]} r{self.mlp_ratio[s]:g}"
      if t != "attention":
        desc += f" e{self.expand[s]:g} n{self.d_state[s]}"
      parts.append(desc)
    return " | ".join(parts)
