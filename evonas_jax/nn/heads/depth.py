"""Monocular depth decoder of EvoNAS (MambaDepth, research/evonas.md §2.7).

Backbone features f0..f3 (strides 4/8/16/32, widths d0..d3):
  x  = StripPooling x2 (f3)                              ("sp" neck; "none": x = f3)
  e3 = SpaMamba(x)  + f3 ; x = PixelShuffle2(conv3x3(e3): d3 -> 4*d2)
  e2 = SpaMamba(x)  + f2 ; x = PixelShuffle2(conv3x3(e2): d2 -> 4*d1)
  e1 = SpaMamba(x)  + f1 ; x = PixelShuffle2(conv3x3(e1): d1 -> 4*d0)
  e0 = SpaMamba(x)  + f0 ; x = conv3x3(e0): d0 -> d0
  depth = max_depth * bilinear_x4(sigmoid(conv3x3(x): d0 -> 1))
With the official widths 64/128/256/512 the convs are 512->1024, 256->512, 128->256, 64->64.
"""
from __future__ import annotations

import flax.linen as nn

from evonas_jax.nn.heads.ops import conv, pixel_shuffle, resize_bilinear
from evonas_jax.nn.heads.spatial_mamba import SpatialMambaBlock
from evonas_jax.nn.heads.strip_pooling import StripPoolingNeck

NECKS = ("sp", "none")


class DepthDecoder(nn.Module):
  """feats [(B, H/4·2^-s, W/4·2^-s, d_s)] x4 -> {"depth": (B, H, W) in (0, max_depth)}.

  image_hw: the input image size (H, W); the disparity is upsampled x4 and then, if the input was
  not a multiple of 4, resized to it.
  """
  TASK_ARGS = ("max_depth",)

  max_depth: float = 10.0
  mlp_ratio: float = 4.0
  neck: str = "sp"
  pool_sizes: tuple[int, int] = (20, 12)
  scan_backend: str = "auto"
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, feats, image_hw, train: bool = False):
    if self.neck not in NECKS:
      raise ValueError(f"depth head: neck {self.neck!r} not in {NECKS}")
    if not self.max_depth > 0:
      raise ValueError(f"depth head: max_depth must be > 0, got {self.max_depth}")
    dims = [f.shape[-1] for f in feats]
    x = feats[3]
    if self.neck == "sp":
      x = StripPoolingNeck(2, tuple(self.pool_sizes), self.bn_axis_name, name="neck")(x, train)
    for s in (3, 2, 1, 0):
      e = SpatialMambaBlock(self.mlp_ratio, self.scan_backend, name=f"spamamba{s}")(x) + feats[s]
      if s > 0:
        x = pixel_shuffle(conv(4 * dims[s - 1], 3, name=f"up_conv{s}")(e), 2)
        if x.shape[1:3] != feats[s - 1].shape[1:3]:
          raise ValueError(f"depth head: stage {s - 1} feature is {feats[s - 1].shape[1:3]}, the "
                           f"upsampled decoder map {x.shape[1:3]}; use H, W divisible by 32")
      else:
        x = conv(dims[0], 3, name="out_conv")(e)
    # Zero-initialised prediction layer: every pixel starts at max_depth / 2 with a live sigmoid.
    # With the default init the un-normalised decoder sum saturates the sigmoid at some pixels
    # (measured at init on ARC2017: predictions from 2e-5 m to max_depth), whose gradient is then
    # ~0, and a short run drifted into saturation instead of learning the scale.
    disp = nn.sigmoid(nn.Conv(1, (3, 3), padding=((1, 1), (1, 1)),
                              kernel_init=nn.initializers.zeros, name="disp_head")(x))
    h4, w4 = disp.shape[1:3]
    disp = resize_bilinear(disp, (4 * h4, 4 * w4))
    disp = resize_bilinear(disp, tuple(image_hw))
    return {"depth": disp[..., 0] * self.max_depth}
