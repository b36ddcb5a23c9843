"""Masked-mode encoding: genome -> pytree of 0/1 arrays that the supernet consumes.

The function is pure jnp over the genome, so it traces: `jax.vmap(lambda g: genome_to_masks(
space, g))(genomes)` gives stacked masks for many candidates, and one compile of the supernet
serves every subnet (DESIGN.md invariant 1).
"""
from __future__ import annotations

import jax.numpy as jnp

from evonas_jax.space.arch import Arch
from evonas_jax.space.evonas import SearchSpace


def _gene_index(space: SearchSpace) -> dict[str, int]:
  return {name: i for i, name in enumerate(space.gene_names)}


def genome_to_masks(space: SearchSpace, genome) -> list[dict[str, jnp.ndarray]]:
  """Masks for one genome (traceable; genome is int (genome_length,)).

  Returns:
    One dict per stage s, with C = dims[s]:
      depth: f32 (max_depths[s],)  1 = block runs, 0 = block is identity.
      mlp:   f32 (hidden_max,)     first int(C * mlp_ratio) entries are 1.
      inner: f32 (d_inner_max,)    first int(C * expand) entries are 1 (SSM stages).
      state: f32 (d_state_max,)    first d_state entries are 1 (SSM stages).
      type:  i32 ()                index into space.stage_types(s).
  """
  genome = jnp.asarray(genome, jnp.int32)
  idx = _gene_index(space)
  out = []
  for s, c in enumerate(space.dims):
    mw = space.max_widths(s)
    tag = f"[stage {s + 1}]"
    hidden = jnp.asarray([int(c * r) for r in space.mlp_choices])[genome[idx["mlp_ratio" + tag]]]
    if s in space.ssm_stages:
      d_inner = jnp.asarray([int(c * e) for e in space.expand_choices])[genome[idx["expand" + tag]]]
      d_state = jnp.asarray(space.d_state_choices)[genome[idx["d_state" + tag]]]
    else:
      d_inner, d_state = mw["d_inner"], mw["d_state"]
    sl = space.depth_slice(s)
    btype = genome[idx["block_type" + tag]] if space.searchable_types else jnp.int32(0)
    out.append({
        "depth": genome[sl].astype(jnp.float32),
        "mlp": (jnp.arange(mw["hidden"]) < hidden).astype(jnp.float32),
        "inner": (jnp.arange(mw["d_inner"]) < d_inner).astype(jnp.float32),
        "state": (jnp.arange(mw["d_state"]) < d_state).astype(jnp.float32),
        "type": jnp.asarray(btype, jnp.int32),
    })
  return out


def arch_masks(space: SearchSpace, arch: Arch) -> list[dict[str, jnp.ndarray]]:
  """Masks for an `Arch` (validated against the space)."""
  return genome_to_masks(space, space.encode(arch))


def stack_masks(masks: list) -> list:
  """Stacks a list of per-arch mask pytrees along a new leading (candidate) axis."""
  import jax
  return jax.tree.map(lambda *xs: jnp.stack(xs), *masks)


def full_mask_for_spec(block_spec) -> dict | None:
  """An all-active mask for a block allocation (None when it holds a single mixer type)."""
  if len(block_spec.types) == 1:
    return None
  w = block_spec.widths
  return {"depth": jnp.ones((1,)), "mlp": jnp.ones((block_spec.hidden,)),
          "inner": jnp.ones((w.d_inner,)), "state": jnp.ones((w.d_state,)),
          "type": jnp.int32(0)}
