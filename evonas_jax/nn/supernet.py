"""EvoNet: the VSS-ViT network, as a supernet (masked mode) or as one subnet (sliced mode).

One module, two allocations (DESIGN.md invariant 1):

* `supernet_spec(space)` allocates every block at maximum width with every mixer type of the
  stage. `apply(variables, images, masks)` runs a subnet given as 0/1 mask arrays: one compile
  serves every arch, and `jax.vmap` over masks evaluates many candidates on one batch.
* `subnet_spec(space, arch)` allocates only the arch: its widths, its active blocks (named by
  their supernet index, so drop-path rates and params stay tied to the supernet position) and
  its one mixer type per stage. `extract_subnet(variables, space, arch)` slices the supernet's
  variables to that spec: the standalone network.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.nn.block import MIXERS, Block, BlockSpec, Widths
from evonas_jax.nn.layers import Dense, LayerNorm
from evonas_jax.nn.mlp import Mlp
from evonas_jax.nn.stem import PatchMerging, Stem
from evonas_jax.space import Arch, SearchSpace


@dataclasses.dataclass(frozen=True)
class NetSpec:
  """Static structure of an EvoNet: dims per stage and the allocated blocks of each stage."""
  dims: tuple[int, ...]
  stages: tuple[tuple[BlockSpec, ...], ...]


def _drop_rates(space: SearchSpace, rate: float) -> list[list[float]]:
  total = sum(space.max_depths)
  out, g = [], 0
  for d in space.max_depths:
    out.append([rate * (g + i) / max(total - 1, 1) for i in range(d)])
    g += d
  return out


def supernet_spec(space: SearchSpace, drop_path_rate: float = 0.0) -> NetSpec:
  rates = _drop_rates(space, drop_path_rate)
  stages = []
  for s, (c, h) in enumerate(zip(space.dims, space.heads)):
    mw = space.max_widths(s)
    wd = Widths(c, h, mw["d_inner"], mw["d_state"])
    stages.append(tuple(BlockSpec(i, space.stage_types(s), mw["hidden"], wd, rates[s][i])
                        for i in range(space.max_depths[s])))
  return NetSpec(tuple(space.dims), tuple(stages))


def subnet_widths(space: SearchSpace, arch: Arch, stage: int) -> tuple[int, Widths]:
  """(mlp hidden, mixer Widths) of `arch` at `stage`."""
  c = space.dims[stage]
  return int(c * arch.mlp_ratio[stage]), Widths(c, space.heads[stage],
                                                int(c * arch.expand[stage]), arch.d_state[stage])


def subnet_spec(space: SearchSpace, arch: Arch, drop_path_rate: float = 0.0) -> NetSpec:
  space.validate_arch(arch)
  rates = _drop_rates(space, drop_path_rate)
  stages = []
  for s in range(space.num_stages):
    hidden, wd = subnet_widths(space, arch, s)
    stages.append(tuple(BlockSpec(i, (arch.block_type[s],), hidden, wd, rates[s][i])
                        for i in arch.active_blocks(s)))
  return NetSpec(tuple(space.dims), tuple(stages))


class EvoNet(nn.Module):
  """images (B, H, W, Cin) float32 -> logits (B, num_classes).

  masks: None (the allocation is the network) or the per-stage mask list of
  `evonas_jax.space.genome_to_masks` (masked mode; requires the supernet allocation).
  With return_features=True also returns the four stage outputs [(B, H_s, W_s, dims[s])].
  bn_axis_name: the shard_map axis name for synchronised BatchNorm statistics (data parallel).
  classifier=False (the backbone of a dense-prediction model): no final norm / head parameters;
  returns only the four stage features (num_classes is then ignored).
  """
  spec: NetSpec
  num_classes: int
  scan_backend: str = "auto"
  bn_axis_name: str | None = None
  classifier: bool = True

  @nn.compact
  def __call__(self, x, masks=None, train: bool = False, return_features: bool = False):
    sp = self.spec
    x = Stem(sp.dims[0], self.bn_axis_name, name="stem")(x, train)
    feats = []
    for s, blocks in enumerate(sp.stages):
      if s > 0:
        x = PatchMerging(sp.dims[s], self.bn_axis_name, name=f"downsample{s}")(x, train)
      m = None if masks is None else masks[s]
      for bs in blocks:
        y = Block(bs, self.scan_backend, name=f"stage{s}_block{bs.index}")(x, m, train)
        # Depth bit 0 -> identity. `where` is exact either way and gives the skipped block's
        # weights exactly zero gradient.
        x = y if m is None else jnp.where(m["depth"][bs.index] > 0, y, x)
      feats.append(x)
    if not self.classifier:
      return feats
    logits = Dense(self.num_classes, name="head")(LayerNorm(name="norm")(x).mean(axis=(1, 2)))
    return (logits, feats) if return_features else logits


def init_supernet(space: SearchSpace, num_classes: int, rng, image_shape, *,
                  drop_path_rate: float = 0.0, scan_backend: str = "auto"):
  """Builds the supernet module and its variables {'params', 'batch_stats'}.

  image_shape: (H, W, Cin) of one input image. Initialising the unrolled 18-block network in one
  jit takes 15-45 s to compile on CPU, so blocks are initialised per stage with one vmapped,
  compiled init (every block of a stage has the same allocation), then assembled.
  """
  model = EvoNet(supernet_spec(space, drop_path_rate), num_classes, scan_backend)
  variables = init_variables(model.spec, num_classes, rng, image_shape, scan_backend)
  return model, variables


def init_variables(spec: NetSpec, num_classes: int, rng, image_shape, scan_backend="auto",
                   classifier: bool = True):
  """Variables of EvoNet(spec): stem/downsample/head from a block-less shell, blocks per stage."""
  from evonas_jax.space.masks import full_mask_for_spec
  shell = EvoNet(NetSpec(spec.dims, tuple(() for _ in spec.stages)), num_classes, scan_backend,
                 classifier=classifier)
  x = jnp.zeros((1, *image_shape), jnp.float32)
  k_shell, k_blocks = jax.random.split(rng)
  variables = jax.jit(functools.partial(shell.init, train=False))(k_shell, x)
  out = jax.eval_shape(functools.partial(shell.apply, return_features=True), variables, x)
  feats = out[1] if classifier else out
  params = dict(variables["params"])
  for s, blocks in enumerate(spec.stages):
    if not blocks:
      continue
    # The stage's first block stands for all: same allocation, so one compile per stage.
    block = Block(dataclasses.replace(blocks[0], index=0, drop_path=0.0), scan_backend)
    mask = full_mask_for_spec(blocks[0])
    keys = jax.random.split(jax.random.fold_in(k_blocks, s), len(blocks))
    xs = jnp.zeros(feats[s].shape, jnp.float32)
    stacked = jax.jit(jax.vmap(lambda k: block.init(k, xs, mask)["params"]))(keys)
    for j, bs in enumerate(blocks):
      params[f"stage{s}_block{bs.index}"] = jax.tree.map(lambda a: a[j], stacked)
  return {**variables, "params": params}


def subnet_model(space: SearchSpace, arch: Arch, num_classes: int, *,
                 drop_path_rate: float = 0.0, scan_backend: str = "auto") -> EvoNet:
  return EvoNet(subnet_spec(space, arch, drop_path_rate), num_classes, scan_backend)


def extract_subnet(variables, space: SearchSpace, arch: Arch):
  """Supernet variables -> standalone variables of `subnet_model(space, arch, ...)`.

  Works on concrete arrays and under jit (all indices are static).
  """
  params = variables["params"]
  out = {k: v for k, v in params.items() if not k.startswith("stage")}
  full = supernet_spec(space)
  for s in range(space.num_stages):
    hidden, sub = subnet_widths(space, arch, s)
    t = arch.block_type[s]
    for i in arch.active_blocks(s):
      p = params[f"stage{s}_block{i}"]
      q = {k: p[k] for k in ("cpe1", "norm1", "cpe2", "norm2")}
      q["mlp"] = Mlp.slice_params(p["mlp"], hidden)
      q[f"mixer_{t}"] = MIXERS[t].slice_params(p[f"mixer_{t}"], full.stages[s][i].widths, sub)
      out[f"stage{s}_block{i}"] = q
  result = {"params": out}
  if "batch_stats" in variables:
    result["batch_stats"] = variables["batch_stats"]   # stem/downsample only: not elastic
  return result


def sliced_apply(model_kwargs: dict, space: SearchSpace, arch: Arch):
  """Sliced mode: a jitted fn(supernet_variables, images) -> logits for the static `arch`.

  Slicing happens inside the compiled function, so the compiled network is the real, small one.
  """
  net = subnet_model(space, arch, **model_kwargs)

  @jax.jit
  def f(variables, images):
    return net.apply(extract_subnet(variables, space, arch), images)
  return f
