"""Attention projector: student feature map -> teacher grid and width (research/evonas.md §3.2).

CA-DDKD uses two independent projectors (one per domain). Each maps the student's last-stage map
(B, Hs, Ws, Cs) onto the teacher's (B, Ht, Wt, Ct) by cross-attention: one learned query per
teacher cell attends over all student tokens, so the two grids need not be related (a 1x1 student
grid works, and so does a student grid larger than the teacher's).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.nn.layers import BN_MOMENTUM, Dense, dense_init


class AttentionProjector(nn.Module):
  """student_feat (B, Hs, Ws, Cs) -> (B, Ht, Wt, teacher_dim).

  1. Student path: conv3x3 (Cs -> student_dim, default Cs) + BatchNorm + ReLU, plus a learned
     positional embedding at the student resolution (`pos_grid`, default the grid seen at init;
     bilinearly resized when the grid at apply time differs, as the official det/seg code does).
  2. Queries: one learned `teacher_dim` vector per teacher cell, through a 1x1 conv (Dense) + ReLU.
  3. Global cross-attention, `num_heads` heads: q from the queries, k/v = linear maps of the
     student tokens to teacher_dim, all with bias; logits scaled by head_dim**-0.5 * softmax_scale
     (official softmax_scale 5: sharper attention); output linear layer.
  4. LayerNorm, then an FFN (teacher_dim -> ffn_ratio*teacher_dim -> teacher_dim, ReLU) added to
     its own normalised input: out = y + FFN(y), y = LN(attn).

  The attention weights (B, heads, Ht*Wt, Hs*Ws) are sown as intermediates["attention"][0].
  BatchNorm statistics live in `batch_stats`: pass train=True with mutable=["batch_stats"].
  """
  teacher_grid: tuple[int, int]
  teacher_dim: int
  num_heads: int = 16
  softmax_scale: float = 5.0
  ffn_ratio: int = 4
  student_dim: int | None = None
  pos_grid: tuple[int, int] | None = None
  bn_axis_name: str | None = None   # shard_map axis for synchronised BN stats (data parallel)

  def _check(self, x):
    if x.ndim != 4:
      raise ValueError(f"AttentionProjector: student_feat must be (B, H, W, C); got shape {x.shape}")
    tg = tuple(self.teacher_grid)
    if len(tg) != 2 or min(tg) < 1:
      raise ValueError(f"AttentionProjector: teacher_grid must be two positive ints; got {self.teacher_grid!r}")
    if self.teacher_dim < 1 or self.num_heads < 1 or self.teacher_dim % self.num_heads:
      raise ValueError(f"AttentionProjector: num_heads={self.num_heads} must divide teacher_dim="
                       f"{self.teacher_dim}")
    if self.softmax_scale <= 0:
      raise ValueError(f"AttentionProjector: softmax_scale must be > 0; got {self.softmax_scale}")
    if self.ffn_ratio < 1:
      raise ValueError(f"AttentionProjector: ffn_ratio must be >= 1; got {self.ffn_ratio}")

  @nn.compact
  def __call__(self, student_feat, train: bool = False):
    self._check(student_feat)
    b, hs, ws, cs = student_feat.shape
    ht, wt = (int(v) for v in self.teacher_grid)
    ct, nh = self.teacher_dim, self.num_heads
    hd = ct // nh
    cs_out = self.student_dim or cs

    # 1. Student path.
    x = nn.Conv(cs_out, (3, 3), padding=1, kernel_init=dense_init, name="conv")(student_feat)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5,
                     axis_name=self.bn_axis_name if train else None, name="bn")(x)
    x = nn.relu(x)
    gh, gw = self.pos_grid or (hs, ws)
    pos = self.param("student_pos", dense_init, (1, gh, gw, cs_out))
    if (gh, gw) != (hs, ws):
      pos = jax.image.resize(pos, (1, hs, ws, cs_out), method="bilinear")
    x = (x + pos).reshape(b, hs * ws, cs_out)
    self.sow("intermediates", "student_tokens", x)

    # 2. One query per teacher cell (shared by the batch).
    queries = self.param("queries", dense_init, (ht * wt, ct))
    queries = nn.relu(Dense(ct, name="query_proj")(queries))               # (Lt, Ct)
    self.sow("intermediates", "query_embed", queries)

    # 3. Cross-attention over all student tokens.
    q = Dense(ct, name="q")(queries).reshape(ht * wt, nh, hd)
    k = Dense(ct, name="k")(x).reshape(b, hs * ws, nh, hd)
    v = Dense(ct, name="v")(x).reshape(b, hs * ws, nh, hd)
    logits = jnp.einsum("lhd,bmhd->bhlm", q, k) * (hd ** -0.5 * self.softmax_scale)
    attn = jax.nn.softmax(logits, axis=-1)                                  # (B, nh, Lt, Ls)
    self.sow("intermediates", "attention", attn)
    y = jnp.einsum("bhlm,bmhd->blhd", attn, v).reshape(b, ht * wt, ct)
    y = Dense(ct, name="out")(y)

    # 4. LayerNorm + FFN with identity add of its normalised input.
    y = nn.LayerNorm(epsilon=1e-5, name="norm")(y)
    h = nn.relu(Dense(self.ffn_ratio * ct, name="ffn_in")(y))
    y = y + Dense(ct, name="ffn_out")(h)
    return y.reshape(b, ht, wt, ct)
