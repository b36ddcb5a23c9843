"""Mamba-FPN neck and the UPer-style segmentation head of EvoNAS (research/evonas.md §2.7).

MambaFPN (shared with detection), backbone features f0..f3 with widths d0..d3:
  e3 = StripPooling x2 (f3)
  e_s = SpaMamba( up(ReLU(BN(conv1x1(e_{s+1}): d_{s+1} -> d_s))) + f_s ),  s = 2, 1, 0
  P_{s+2} = conv3x3(e_s -> out_channels)   (+BN+ReLU when `norm_outputs`, the UPer fpn_convs)
  P6 = stride-2 max-pool (kernel 1) of P5   (mmdet FPN's extra level)
Segmentation (UPerHead_with_mamba): P2..P5 (out_channels = fpn_channels, official 512) resized to
stride 4, concatenated, fpn_bottleneck conv3x3+BN+ReLU -> fpn_channels, dropout, 1x1 classifier.
Aux FCN on f2 (stage 3): conv3x3+BN+ReLU -> aux_channels (official 256), dropout, 1x1 classifier.
Both logits are upsampled (bilinear, align_corners=False as mmseg) to the input size.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from evonas_jax.nn.heads.ops import ConvBN, conv, resize_bilinear
from evonas_jax.nn.heads.spatial_mamba import SpatialMambaBlock
from evonas_jax.nn.heads.strip_pooling import StripPoolingNeck


class MambaFPN(nn.Module):
  """feats (4 maps, strides 4..32) -> [P2, P3, P4, P5(, P6)] each (B, h_l, w_l, out_channels).

  With return_levels=True returns (pyramid, [e0, e1, e2, e3]) (the pre-output decoder maps).
  """
  out_channels: int = 256
  norm_outputs: bool = False
  extra_p6: bool = True
  mlp_ratio: float = 4.0
  pool_sizes: tuple[int, int] = (20, 12)
  scan_backend: str = "auto"
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, feats, train: bool = False, return_levels: bool = False):
    ax = self.bn_axis_name
    e = [None] * 4
    e[3] = StripPoolingNeck(2, tuple(self.pool_sizes), ax, name="neck")(feats[3], train)
    for s in (2, 1, 0):
      t = ConvBN(feats[s].shape[-1], (1, 1), True, ax, name=f"reduce{s + 1}")(e[s + 1], train)
      t = resize_bilinear(t, feats[s].shape[1:3]) + feats[s]
      e[s] = SpatialMambaBlock(self.mlp_ratio, self.scan_backend, name=f"spamamba{s}")(t)
    outs = []
    for s in range(4):
      if self.norm_outputs:
        outs.append(ConvBN(self.out_channels, (3, 3), True, ax, name=f"fpn_conv{s}")(e[s], train))
      else:
        outs.append(conv(self.out_channels, 3, name=f"fpn_conv{s}")(e[s]))
    if self.extra_p6:
      outs.append(outs[3][:, ::2, ::2, :])   # max_pool2d(kernel 1, stride 2) == subsampling
    return (outs, e) if return_levels else outs


class SegmentationHead(nn.Module):
  """feats -> {"logits": (B, H, W, K), "aux_logits": (B, H, W, K)} at the input size image_hw."""
  TASK_ARGS = ("num_classes",)

  num_classes: int = 150
  fpn_channels: int = 512
  aux_channels: int = 256
  dropout: float = 0.1
  mlp_ratio: float = 4.0
  pool_sizes: tuple[int, int] = (20, 12)
  scan_backend: str = "auto"
  bn_axis_name: str | None = None

  def setup(self):
    if self.num_classes < 1:
      raise ValueError(f"segmentation head: num_classes must be >= 1, got {self.num_classes}")
    ax = self.bn_axis_name
    self.fpn = MambaFPN(self.fpn_channels, norm_outputs=True, extra_p6=False,
                        mlp_ratio=self.mlp_ratio, pool_sizes=tuple(self.pool_sizes),
                        scan_backend=self.scan_backend, bn_axis_name=ax)
    self.fpn_bottleneck = ConvBN(self.fpn_channels, (3, 3), True, ax)
    self.cls_seg = conv(self.num_classes, 1)
    self.aux_conv = ConvBN(self.aux_channels, (3, 3), True, ax)
    self.aux_cls = conv(self.num_classes, 1)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, feats, image_hw, train: bool = False):
    pyramid = self.fpn(feats, train)
    size = pyramid[0].shape[1:3]
    x = jnp.concatenate([resize_bilinear(p, size) for p in pyramid], axis=-1)
    x = self.drop(self.fpn_bottleneck(x, train), deterministic=not train)
    logits = self.cls_seg(x)
    a = self.drop(self.aux_conv(feats[2], train), deterministic=not train)
    aux = self.aux_cls(a)
    return {"logits": resize_bilinear(logits, tuple(image_hw)),
            "aux_logits": resize_bilinear(aux, tuple(image_hw))}

  def pyramid(self, feats, train: bool = False):
    """The Mamba-FPN levels [P2..P5] at fpn_channels (for inspection / reuse)."""
    return self.fpn(feats, train)
