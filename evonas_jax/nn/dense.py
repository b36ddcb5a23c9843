"""DenseEvoNet: the EvoNet backbone + a dense-prediction head (depth or segmentation), in masked
mode (supernet allocation + masks: one compile for every arch) and sliced mode (subnet spec +
`extract_dense_subnet`), as in `evonas_jax.nn.supernet` (DESIGN.md invariant 1).

Stage widths are not searched, so the decoder sees the same feature shapes for every arch: the
head and the per-stage output LayerNorms `outnorm{s}` (research/evonas.md §2.5) are shared,
non-elastic parameters, copied unchanged into a standalone subnet.

Variables: {"params": {"backbone": <EvoNet params>, "outnorm0".."outnorm3", "decoder": ...},
            "batch_stats": {"backbone": ..., "decoder": ...}}.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.nn.heads.registry import get_head, head_class
from evonas_jax.nn.layers import LayerNorm, depthwise_impl
from evonas_jax.nn.supernet import (EvoNet, NetSpec, extract_subnet, init_variables, subnet_spec,
                                    supernet_spec)
from evonas_jax.space import Arch, SearchSpace

_RESERVED = ("max_depth", "num_classes", "scan_backend", "bn_axis_name", "name")


class DenseEvoNet(nn.Module):
  """images (B, H, W, Cin) [, masks] [, train] -> dict of outputs.

  head "depth": {"depth": (B, H, W)} metres in (0, max_depth).
  head "segmentation": {"logits": (B, H, W, K), "aux_logits": (B, H, W, K)}, K = num_classes.
  return_features=True adds "features": the four backbone maps after outnorm{s}
  [(B, H/4, W/4, d0), ..., (B, H/32, W/32, d3)] (the CA-DDKD student features).
  masks: None (the allocation is the network) or `genome_to_masks` output (supernet spec).
  H and W must be multiples of 32 (the decoders upsample by exact factors of 2).
  """
  spec: NetSpec
  head: str
  head_cfg: Any = None
  num_classes: int = 0
  max_depth: float = 10.0
  scan_backend: str = "auto"
  bn_axis_name: str | None = None

  def setup(self):
    cfg = dict(self.head_cfg or {})
    clash = sorted(set(cfg) & set(_RESERVED))
    if clash:
      raise ValueError(f"head_cfg may not set {clash}: they are DenseEvoNet fields")
    task = {k: getattr(self, k) for k in head_class(self.head).TASK_ARGS}
    self.backbone = EvoNet(self.spec, 0, self.scan_backend, self.bn_axis_name, classifier=False)
    for s in range(len(self.spec.dims)):
      setattr(self, f"outnorm{s}", LayerNorm())
    self.decoder = get_head(self.head, **cfg, **task, scan_backend=self.scan_backend,
                            bn_axis_name=self.bn_axis_name)

  def features(self, images, masks=None, train: bool = False):
    """Backbone maps after the per-stage LayerNorms: list of 4 (B, H_s, W_s, d_s)."""
    _check_images(images)
    feats = self.backbone(images, masks, train)
    return [getattr(self, f"outnorm{s}")(f) for s, f in enumerate(feats)]

  def decode(self, feats, image_hw, train: bool = False):
    """The head alone on (outnormed) features: arch-independent."""
    return dict(self.decoder(feats, tuple(image_hw), train))

  def __call__(self, images, masks=None, train: bool = False, return_features: bool = False):
    feats = self.features(images, masks, train)
    out = self.decode(feats, images.shape[1:3], train)
    if return_features:
      out["features"] = feats
    return out


def _check_images(images):
  if images.ndim != 4:
    raise ValueError(f"DenseEvoNet: images must be (B, H, W, C), got shape {images.shape}")
  _check_hw(images.shape[1:3])


def _check_hw(hw):
  if hw[0] % 32 or hw[1] % 32:
    raise ValueError(f"DenseEvoNet: image height and width must be multiples of 32, got {hw}")


def init_dense_model(space: SearchSpace, head: str, head_cfg: dict | None, num_classes: int,
                     max_depth: float, rng, image_shape, *, drop_path_rate: float = 0.0,
                     scan_backend: str = "auto", bn_axis_name: str | None = None,
                     backbone_variables=None):
  """The supernet DenseEvoNet and its variables {'params', 'batch_stats'}.

  image_shape: (H, W, Cin). The backbone blocks come from `init_variables(classifier=False)`
  (per-stage vmapped init); stem, outnorms and head from one init of a block-less shell.
  backbone_variables: optional supernet EvoNet variables to start from instead (e.g. a trained
  classification supernet: its final "norm"/"head" params are dropped).
  """
  _check_hw(image_shape[:2])
  spec = supernet_spec(space, drop_path_rate)
  kw = dict(head=head, head_cfg=head_cfg, num_classes=num_classes, max_depth=max_depth,
            scan_backend=scan_backend, bn_axis_name=bn_axis_name)
  model = DenseEvoNet(spec, **kw)
  shell = DenseEvoNet(NetSpec(spec.dims, tuple(() for _ in spec.stages)), **kw)
  k_shell, k_bb = jax.random.split(rng)
  x = jnp.zeros((1, *image_shape), jnp.float32)
  v = jax.jit(functools.partial(shell.init, train=False))(k_shell, x)
  if backbone_variables is None:
    bb = init_variables(spec, 0, k_bb, image_shape, scan_backend, classifier=False)
  else:
    bb = _backbone_only(backbone_variables, spec)
  params = {**v["params"], "backbone": bb["params"]}
  stats = {**v["batch_stats"], "backbone": bb["batch_stats"]}
  return model, {"params": params, "batch_stats": stats}


def _backbone_only(variables, spec: NetSpec):
  """EvoNet variables without the classifier's final norm/head, checked against `spec`."""
  params = {k: v for k, v in variables["params"].items() if k not in ("norm", "head")}
  want = {f"stage{s}_block{b.index}" for s, blocks in enumerate(spec.stages) for b in blocks}
  missing = sorted(want - set(params))
  if missing:
    raise ValueError(f"backbone_variables lack the supernet blocks {missing[:4]}...: they must "
                     "be the variables of the supernet EvoNet of the same space and preset")
  return {"params": params, "batch_stats": variables.get("batch_stats", {})}


def dense_subnet_model(space: SearchSpace, arch: Arch, head: str, head_cfg: dict | None,
                       num_classes: int, max_depth: float, *, drop_path_rate: float = 0.0,
                       scan_backend: str = "auto", bn_axis_name: str | None = None) -> DenseEvoNet:
  """The standalone DenseEvoNet of `arch` (params from `extract_dense_subnet`)."""
  return DenseEvoNet(subnet_spec(space, arch, drop_path_rate), head, head_cfg, num_classes,
                     max_depth, scan_backend, bn_axis_name)


def extract_dense_subnet(variables, space: SearchSpace, arch: Arch):
  """Supernet DenseEvoNet variables -> variables of `dense_subnet_model(space, arch, ...)`.

  The backbone is sliced by `extract_subnet`; outnorm and decoder params/stats are shared."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  bb = extract_subnet({"params": params["backbone"], "batch_stats": stats.get("backbone", {})},
                      space, arch)
  out = {"params": {**params, "backbone": bb["params"]}}
  if "batch_stats" in variables:
    out["batch_stats"] = {**stats, "backbone": bb["batch_stats"]}
  return out


def dense_sliced_apply(model_kwargs: dict, space: SearchSpace, arch: Arch):
  """Sliced mode: jitted f(supernet_variables, images) -> outputs dict, for the static `arch`.

  model_kwargs: the keyword arguments of `dense_subnet_model` after `arch` (head, head_cfg,
  num_classes, max_depth, ...). Slicing happens inside the compiled function.
  """
  net = dense_subnet_model(space, arch, **model_kwargs)

  @jax.jit
  def f(variables, images):
    return net.apply(extract_dense_subnet(variables, space, arch), images)
  return f


def _param_count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def _xla_cost(fn, *args) -> dict:
  from evonas_jax.nn.cost import xla_matmul_macs
  # "xla" depthwise: depthwise convs are conv ops, so they are costed as convs (not elementwise).
  with depthwise_impl("xla"):
    macs = xla_matmul_macs(fn, *args)
    ca = jax.jit(fn).lower(*args).cost_analysis()   # XLA's analysis of the lowered HLO
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  return {"macs": macs, "xla_flops": float(ca.get("flops", 0.0))}


def dense_cost(module: DenseEvoNet, variables, image_shape, masks=None) -> dict:
  """{"macs", "params", "xla_flops"} of one forward pass on one image of image_shape (H, W, C).

  macs: every dot_general / conv of the forward, each costed by XLA's cost analysis as
  flops / 2 (one multiply-add = 2 flops; scan bodies counted times their length; bilinear resizes
  and adaptive pools are matmuls here, so they count; elementwise ops do not).
  xla_flops: XLA's flop count of the whole lowered forward (includes elementwise ops; a
  while-loop body, i.e. the CPU scan, is counted once). params: exact count of the params tree.
  For a supernet module pass `masks`: the count is then the supernet's (masked widths still run).
  """
  x = jnp.zeros((1, *image_shape), jnp.float32)
  cost = _xla_cost(lambda v, x: module.apply(v, x, masks), variables, x)
  return {**cost, "params": _param_count(variables["params"])}


def decoder_cost(module: DenseEvoNet, variables, image_shape) -> dict:
  """Cost of the outnorms + head alone (the same for every arch, see `dense_cost`)."""
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  feats = jax.eval_shape(lambda v, x: module.apply(v, x, method=DenseEvoNet.features),
                         variables, x)
  feats = [jnp.zeros(f.shape, f.dtype) for f in feats]
  hw = tuple(image_shape[:2])
  norms = lambda v, fs: [module.apply(v, f, method=lambda m, f, s=s: getattr(m, f"outnorm{s}")(f))
                         for s, f in enumerate(fs)]
  fn = lambda v, fs: module.apply(v, norms(v, fs), hw, method=DenseEvoNet.decode)
  cost = _xla_cost(fn, variables, feats)
  p = variables["params"]
  n = _param_count(p["decoder"]) + sum(_param_count(p[k]) for k in p if k.startswith("outnorm"))
  return {**cost, "params": n}
