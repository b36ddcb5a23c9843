"""`Arch`: one concrete subnet of a search space, as a frozen, hashable dataclass.

An `Arch` is what every part of the system passes around: the search decodes genomes into it,
the supernet turns it into masks (masked mode) or a static network spec (sliced mode), and
`export` writes it next to the standalone params. It round-trips through JSON exactly.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

BLOCK_TYPES = ("vssd", "ss2d", "attention")


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
    # Normalise containers so equal archs hash equal whatever sequence type they came in.
    object.__setattr__(self, "mlp_ratio", tuple(float(r) for r in self.mlp_ratio))
    object.__setattr__(self, "d_state", tuple(int(n) for n in self.d_state))
    object.__setattr__(self, "expand", tuple(float(e) for e in self.expand))
    object.__setattr__(self, "depth", tuple(tuple(int(b) for b in s) for s in self.depth))
    object.__setattr__(self, "block_type", tuple(str(t) for t in self.block_type))
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
    missing = {f.name for f in dataclasses.fields(cls)} - set(d)
    if missing:
      raise ValueError(f"Arch dict is missing fields {sorted(missing)}")
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_json(cls, s: str) -> "Arch":
    return cls.from_dict(json.loads(s))

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
