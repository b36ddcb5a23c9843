"""MLP (Linear -> GELU -> Linear) with an elastic hidden width."""
from __future__ import annotations

import flax.linen as nn

from evonas_jax.nn.layers import Dense, gelu


class Mlp(nn.Module):
  """x (B, H, W, C) -> (B, H, W, C). `hidden` is the allocated width; `mask` (hidden,) selects
  the active leading channels (masked mode)."""
  hidden: int

  @nn.compact
  def __call__(self, x, mask=None):
    h = gelu(Dense(self.hidden, name="fc1")(x))
    if mask is not None:
      h = h * mask   # GELU(bias) != 0, so inactive channels must be zeroed explicitly
    return Dense(x.shape[-1], name="fc2")(h)

  @staticmethod
  def slice_params(p, hidden: int):
    return {"fc1": {"kernel": p["fc1"]["kernel"][:, :hidden], "bias": p["fc1"]["bias"][:hidden]},
            "fc2": {"kernel": p["fc2"]["kernel"][:hidden], "bias": p["fc2"]["bias"]}}
