"""The VSS / ViT block: cpe1 -> LN -> mixer -> cpe2 -> LN -> MLP, all residual (§2.3-2.4).

Mixers come from a registry by name, so a block type is data (the hybrid space's gene).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from evonas_jax.nn.attention import Attention
from evonas_jax.nn.layers import DWConv, LayerNorm, drop_path
from evonas_jax.nn.mlp import Mlp
from evonas_jax.nn.ss2d import SS2DMixer
from evonas_jax.nn.vssd import VSSDMixer

MIXERS = {"vssd": VSSDMixer, "ss2d": SS2DMixer, "attention": Attention}


def register_mixer(name: str, cls) -> None:
  """Adds a mixer type. `cls(heads, d_inner, d_state)` must map (B,H,W,C) -> (B,H,W,C) and
  provide static `slice_params(p, full, sub)`, `macs(h, w, widths)` and `params(widths)`."""
  if name in MIXERS:
    raise ValueError(f"mixer {name!r} is already registered")
  MIXERS[name] = cls


class Widths(NamedTuple):
  """Widths a mixer is allocated with: embedding dim, heads, SSM d_inner and d_state."""
  dim: int
  heads: int
  d_inner: int
  d_state: int


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """Static description of one block as allocated (supernet: max widths, all types).

  index: position of the block inside its stage in the supernet (params are named by it).
  types: mixer types held; a standalone block holds exactly one.
  hidden: MLP hidden width allocated.
  drop_path: stochastic-depth rate, tied to the supernet position.
  """
  index: int
  types: tuple[str, ...]
  hidden: int
  widths: Widths
  drop_path: float = 0.0


class Block(nn.Module):
  """x (B, H, W, C) -> (B, H, W, C). mask: the stage's mask dict (masked mode) or None."""
  spec: BlockSpec
  scan_backend: str = "auto"

  @nn.compact
  def __call__(self, x, mask=None, train: bool = False):
    sp, c = self.spec, x.shape[-1]
    det = not train
    rng = lambda: self.make_rng("dropout") if train and sp.drop_path > 0 else None
    x = x + DWConv(c, name="cpe1")(x)
    h = LayerNorm(name="norm1")(x)
    outs = []
    for t in sp.types:
      kw = {"scan_backend": self.scan_backend} if t == "ss2d" else {}
      outs.append(MIXERS[t](sp.widths.heads, sp.widths.d_inner, sp.widths.d_state,
                            name=f"mixer_{t}", **kw)(h, mask))
    if len(outs) == 1:
      y = outs[0]
    elif mask is None:
      raise ValueError(f"block {sp.index} holds mixers {sp.types}: masked mode needs mask['type']")
    else:
      # Selecting by a traced index keeps one compile for every block type; the unselected
      # mixers get exactly zero gradient.
      y = jnp.stack(outs)[mask["type"]]
    x = x + drop_path(y, sp.drop_path, rng(), det)
    x = x + DWConv(c, name="cpe2")(x)
    y = Mlp(sp.hidden, name="mlp")(LayerNorm(name="norm2")(x), None if mask is None else mask["mlp"])
    return x + drop_path(y, sp.drop_path, rng(), det)
