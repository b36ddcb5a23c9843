"""NAS-Bench-201 cell network in Flax linen, masked per edge so the cell is data.

Macro skeleton (NB201 TinyNetwork): stem conv3x3 + BN -> N cells (C) -> ResNet reduction (2C)
-> N cells -> reduction (4C) -> N cells -> BN + ReLU -> global average pool -> linear.
Every edge computes all its ops and sums them weighted by the one-hot op mask
(6, 5) in NASLib op order (skip, none, conv3x3, conv1x1, avgpool; evonas_jax.space.nb201), so one
compile serves all 15,625 cells and `jax.vmap` over masks scores many cells at once. Inactive ops get
exactly zero gradient (their output is multiplied by 0), which the proxies rely on.

BatchNorm uses batch statistics (train mode, as NASLib computes proxies at init) and has no
running stats; `bn=False` removes it (SynFlow). Conv inits follow PyTorch's default
(U(+-1/sqrt(fan_in))), as NASLib uses PyTorch defaults.

Proxy hooks:
* `capture=True` returns `(logits, acts)`: acts is a list, in forward order, of
  `(pre_activation (B, H, W, C), weight scalar)` for every ReLU; weight is the op's mask value
  (0 for ReLUs of inactive ops) so proxies can drop them;
* every conv/linear output passes through `self.perturb("probe", y)` and is sown to the `outs`
  collection, so d loss / d output is available (Fisher);
* `weight_paths(cfg)` lists the conv/linear kernels in forward order (flax param dicts are
  name-sorted, so the order must be explicit).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.space.nb201 import EDGES

_torch_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# Op codes (NASLib): 0 skip, 1 none, 2 conv3x3, 3 conv1x1, 4 avgpool.
SKIP, NONE, CONV3, CONV1, POOL = range(5)


@dataclasses.dataclass(frozen=True)
class NB201Config:
  channels: int = 16       # C of the first stage (NB201: 16)
  cells: int = 5           # N cells per stage (NB201: 5)
  num_classes: int = 10
  image_size: int = 32
  in_channels: int = 3


class BN(nn.Module):
  """BatchNorm over (B, H, W) with batch statistics; affine scale/bias params."""
  @nn.compact
  def __call__(self, x, bn: bool = True):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    if not bn:
      return x
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias


class PConv(nn.Module):
  """Conv (no bias) whose output is probed (perturb) and sown for Fisher."""
  features: int
  kernel: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    p = self.kernel // 2
    y = nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                padding=((p, p), (p, p)), use_bias=False, kernel_init=_torch_init, name="conv")(x)
    y = self.perturb("probe", y)
    self.sow("outs", "probe_out", y)
    return y


class ReLUConvBN(nn.Module):
  features: int
  kernel: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, bn=True):
    y = PConv(self.features, self.kernel, self.stride, name="pconv")(nn.relu(x))
    return BN(name="bn")(y, bn)


def avg_pool3(x):
  """3x3 average pool, stride 1, pad 1, count_include_pad=False (NB201). (B,H,W,C) -> same."""
  win, pad = (1, 3, 3, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, win, (1, 1, 1, 1), pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  n = jax.lax.reduce_window(ones, 0.0, jax.lax.add, win, (1, 1, 1, 1), pad)
  return s / n


class Cell(nn.Module):
  """NB201 cell; masks (6, 5) one-hot per edge in NASLib op order. Scan body: (x, masks) ->
  (node 3, acts) with acts = [(edge input, conv-op mask)] per edge (its ReLU is used only by the
  conv ops; conv3x3 and conv1x1 on one edge are exclusive, so one entry per edge)."""
  features: int
  bn: bool = True

  @nn.compact
  def __call__(self, x, masks):
    nodes, acts = [x], []
    for j in range(1, 4):
      total = 0.0
      for e, (k, jj) in enumerate(EDGES):
        if jj != j:
          continue
        m, h = masks[e], nodes[k]
        c3 = ReLUConvBN(self.features, 3, name=f"e{e}_conv3")(h, self.bn)
        c1 = ReLUConvBN(self.features, 1, name=f"e{e}_conv1")(h, self.bn)
        acts.append((h, m[CONV3] + m[CONV1]))
        total = total + m[SKIP] * h + m[CONV3] * c3 + m[CONV1] * c1 + m[POOL] * avg_pool3(h)
      nodes.append(total)
    return nodes[3], acts


class Stage(nn.Module):
  """`cells` cells scanned with nn.scan (one traced cell body: compile time does not grow with N).
  Params/perturbations/outs carry a leading (cells,) axis."""
  features: int
  cells: int
  bn: bool = True

  @nn.compact
  def __call__(self, x, masks):
    scan = nn.scan(Cell, variable_axes={"params": 0, "perturbations": 0, "outs": 0},
                   split_rngs={"params": True}, in_axes=nn.broadcast, length=self.cells)
    x, acts = scan(self.features, self.bn, name="cells")(x, masks)
    # Unstack to forward (cell-major) order.
    return x, [(h[c], w[c]) for c in range(self.cells) for h, w in acts]


class Reduction(nn.Module):
  """ResNet basic block, stride 2 (NB201 ResNetBasicblock)."""
  features: int

  @nn.compact
  def __call__(self, x, bn=True):
    a = ReLUConvBN(self.features, 3, 2, name="conv_a")(x, bn)
    b = ReLUConvBN(self.features, 3, 1, name="conv_b")(a, bn)
    s = nn.avg_pool(x, (2, 2), (2, 2))
    s = PConv(self.features, 1, name="short")(s)
    one = jnp.float32(1.0)
    return s + b, [(x, one), (a, one)]


class NB201Net(nn.Module):
  """(B, H, W, Cin) images, (6, 5) masks -> logits (B, classes) [, acts]."""
  cfg: NB201Config

  @nn.compact
  def __call__(self, x, masks, bn: bool = True, capture: bool = False):
    cfg, acts = self.cfg, []
    x = BN(name="stem_bn")(PConv(cfg.channels, 3, name="stem")(x), bn)
    for s in range(3):
      c = cfg.channels * 2 ** s
      if s > 0:
        x, a = Reduction(c, name=f"red{s}")(x, bn)
        acts += a
      x, a = Stage(c, cfg.cells, bn, name=f"stage{s}")(x, masks)
      acts += a
    x = BN(name="last_bn")(x, bn)
    acts.append((x, jnp.float32(1.0)))
    x = nn.relu(x).mean(axis=(1, 2))
    x = nn.Dense(cfg.num_classes, kernel_init=_torch_init,
                 bias_init=nn.initializers.zeros, name="classifier")(x)
    x = self.perturb("probe", x)
    self.sow("outs", "probe_out", x)
    return (x, acts) if capture else x


def weight_paths(cfg: NB201Config) -> tuple[tuple, ...]:
  """Conv/linear kernel paths (into variables['params']) in forward order. A trailing int picks
  one cell's slice of a scanned (cells, ...) kernel."""
  paths = [("stem", "conv", "kernel")]
  for s in range(3):
    if s > 0:
      paths += [(f"red{s}", "conv_a", "pconv", "conv", "kernel"),
                (f"red{s}", "conv_b", "pconv", "conv", "kernel"),
                (f"red{s}", "short", "conv", "kernel")]
    for i in range(cfg.cells):
      for e in range(6):
        for op in ("conv3", "conv1"):
          paths.append((f"stage{s}", "cells", f"e{e}_{op}", "pconv", "conv", "kernel", i))
  paths.append(("classifier", "kernel"))
  return tuple(paths)


def weight_op_index(cfg: NB201Config) -> tuple[tuple[int, int] | None, ...]:
  """For each weight path: (edge, op code) when the layer belongs to a cell op, else None."""
  out = []
  for p in weight_paths(cfg):
    if p[0].startswith("stage"):
      e = int(p[2][1])
      out.append((e, CONV3 if p[2].endswith("conv3") else CONV1))
    else:
      out.append(None)
  return tuple(out)


def init_nb201(cfg: NB201Config, rng, batch: int = 2):
  """-> (model, variables) with params only (BN has no running stats)."""
  model = NB201Net(cfg)
  x = jnp.zeros((batch, cfg.image_size, cfg.image_size, cfg.in_channels), jnp.float32)
  masks = jnp.zeros((6, 5), jnp.float32).at[:, CONV3].set(1.0)
  variables = model.init(rng, x, masks)
  return model, {"params": variables["params"]}


def nb201_cost(cfg: NB201Config, masks) -> dict:
  """Params and MACs (batch 1) of the active network; pure jnp, vmappable over masks (6, 5).

  Counts conv/linear weights, BN affine params and the classifier bias; MACs count conv and
  linear multiply-accumulates (pooling and BN are free), as NB201/NASLib params/FLOPs do.
  """
  masks = jnp.asarray(masks, jnp.float32)
  params = cfg.in_channels * cfg.channels * 9 + 2 * cfg.channels
  hw = cfg.image_size ** 2
  macs = cfg.in_channels * cfg.channels * 9 * hw
  for s in range(3):
    c = cfg.channels * 2 ** s
    if s > 0:
      cin = c // 2
      hw = hw // 4
      red_p = cin * c * 9 + 2 * c + c * c * 9 + 2 * c + cin * c
      params += red_p
      macs += hw * (cin * c * 9 + c * c * 9 + cin * c)
    per_edge_p = masks[:, CONV3] * (c * c * 9 + 2 * c) + masks[:, CONV1] * (c * c + 2 * c)
    per_edge_m = hw * (masks[:, CONV3] * c * c * 9 + masks[:, CONV1] * c * c)
    params = params + cfg.cells * per_edge_p.sum()
    macs = macs + cfg.cells * per_edge_m.sum()
  c = cfg.channels * 4
  params = params + 2 * c + c * cfg.num_classes + cfg.num_classes
  macs = macs + c * cfg.num_classes
  return {"params": params, "macs": macs}
