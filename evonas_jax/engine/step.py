"""`EngineTrainStep`: the supernet train step that pays only for the sampled subnets.

Same interface and state as `evonas_jax.steps.ShardedTrainStep` (the masked-mode step):
step(state, extra, batch, genomes (k, G), rng) -> (state, metrics), state = {"params",
"batch_stats", "opt_state"}; the same CA-DDKD objective (`supernet_loss.make_subnet_objective`),
the same optimizer update, the same non-finite guard. Per subnet:

  backbone forward, piece by piece at the subnet's widths     (engine.backbone)
  tail: classifier / dense head + the loss, and its vjp        one compiled program
  backbone backward, pieces in reverse                         (engine.backbone)

The gradient of every parameter outside the subnet is exactly zero, as in masked mode, so the
optimizer step (and AdamW's moments) are those of the masked reference.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from evonas_jax import parallel
from evonas_jax.engine.backbone import CompiledBackbone
from evonas_jax.engine.tail import cast_tree, is_dense, make_tail_apply, split_student
from evonas_jax.parallel import DATA_AXIS
from evonas_jax.steps import ShardedTrainStep, make_update
from evonas_jax.supernet_loss import DistillSetup, make_subnet_objective


def _fill(grads: dict, zeros: dict) -> dict:
  """Backbone grads of the pieces that ran, completed with the zero tree (same structure)."""
  out = {}
  for k, z in zeros.items():
    g = grads.get(k)
    if g is None:
      out[k] = z
    elif isinstance(z, dict):
      out[k] = {kk: g[kk] if kk in g else zz for kk, zz in z.items()}
    else:
      out[k] = g
  return out


class EngineTrainStep(ShardedTrainStep):
  """Supernet train step on the compiled engine (see module docstring).

  student: the masked-mode student module (EvoNet / DenseEvoNet; only its head is used here).
  prologue_fn(extra, batch) -> aux: the frozen teacher (run under shard_map like the masked
  step). mesh: its `data` axis shards the batch; the engine's programs are partitioned by XLA.
  """

  def __init__(self, student, space, setup: DistillSetup, tx: optax.GradientTransformation,
               mesh: Mesh, prologue_fn: Callable | None = None, target_shape: tuple | None = None,
               drop_path_rate: float = 0.0, scan_backend: str = "auto"):
    self.mesh, self.tx, self.space = mesh, tx, space
    self.dense = is_dense(student)
    self.backbone = CompiledBackbone(space, drop_path_rate, scan_backend, setup.compute_dtype)
    self.backbone.sync = mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"
    if setup.projector is not None:
      # Under jit (no shard_map) BatchNorm statistics are already over the global batch.
      setup = dataclasses.replace(setup, projector=setup.projector.clone(bn_axis_name=None))
    objective = make_subnet_objective(setup)
    tail_apply = make_tail_apply(student)
    dtype = setup.compute_dtype

    def tail_loss(tail_params, feats, tail_bs, aux, batch, target, use_target, rng):
      """tail_params = {"student": head params, "proj_*": ...}; feats: raw stage outputs."""
      p = cast_tree(tail_params, dtype)
      out, student_feats, new_student_bs = tail_apply(p["student"], tail_bs["student"], feats,
                                                      batch["image"].shape[1:3], True, rng)
      bs = {**tail_bs, "student": new_student_bs}
      return objective(p, bs, aux, batch, out, student_feats, target, use_target)

    def tail_fwd(tail_params, feats, tail_bs, aux, batch, target, use_target, rng):
      loss, vjp, (bs, metrics, kd_target) = jax.vjp(
          lambda tp, f: tail_loss(tp, f, tail_bs, aux, batch, target, use_target, rng),
          tail_params, feats, has_aux=True)
      dtp, dfeats = vjp(jnp.ones_like(loss))
      return dtp, dfeats, bs, {"loss": loss, **metrics}, kd_target

    self._tail = jax.jit(tail_fwd)
    self._prologue = None
    if prologue_fn is not None:
      dp = P(DATA_AXIS)
      self._prologue = jax.jit(jax.shard_map(prologue_fn, mesh=mesh, in_specs=(P(), dp),
                                             out_specs=dp))
    self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
    self._zero_cache = None
    self._update = jax.jit(make_update(tx), donate_argnums=(0,))
    self.target_shape = tuple(target_shape) if target_shape is not None else (
        getattr(student, "num_classes", 0),)
    self.step_seconds: list[float] = []

  def _zero_backbone(self, params):
    """Zero gradients of the whole backbone, committed replicated on the mesh like the computed
    gradients. (A jitted zeros_like returned uncommitted single-device arrays; mixed with the
    committed gradients of the pieces that ran, every new pattern of skipped blocks was a new
    input sharding for the optimizer update and recompiled it: measured 17 recompiles, 114 s,
    in a 40-step run.)"""
    if self._zero_cache is None:
      bb, _ = split_student(params["student"], self.dense)
      self._zero_cache = parallel.replicate(
          self.mesh, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), bb))
    return self._zero_cache

  def subnet_grad(self, params, bs, aux, batch, genome, target_in, use, rng):
    """(grads, batch_stats, metrics, kd_target) of one subnet, as ShardedTrainStep's `_grad`."""
    arch = self.space.decode(np.asarray(genome))
    p_bb, p_tail = split_student(params["student"], self.dense)
    bs_bb, bs_tail = split_student(bs["student"], self.dense)
    feats, new_bs_bb, tape = self.backbone.forward(p_bb, bs_bb, batch["image"], arch, train=True,
                                                   rng=rng)
    tail_params = {"student": p_tail, **{k: v for k, v in params.items() if k != "student"}}
    tail_bs = {"student": bs_tail, **{k: v for k, v in bs.items() if k != "student"}}
    # The masked step folds its key with the device index; on one device this is its stream
    # (the head's dropout masks match it; on N devices the engine draws one global-batch mask).
    head_rng = jax.random.fold_in(rng, 0)
    dtp, dfeats, new_tail_bs, metrics, kd_target = self.backbone._call(
        "tail_loss_fwd_bwd", self._tail, tail_params, feats, tail_bs, aux, batch, target_in, use,
        head_rng)
    g_bb = _fill(self.backbone.backward(tape, dfeats), self._zero_backbone(params))
    grads = {k: v for k, v in dtp.items() if k != "student"}
    grads["student"] = _join(g_bb, dtp["student"], self.dense)
    new_bs = {k: v for k, v in new_tail_bs.items() if k != "student"}
    new_bs["student"] = _join(new_bs_bb, new_tail_bs["student"], self.dense)
    return grads, new_bs, metrics, kd_target

  def __call__(self, state, extra, batch, genomes, rng):
    t0 = time.perf_counter()
    genomes = np.asarray(genomes, np.int32)
    aux = (self.backbone._call("teacher", self._prologue, extra, batch)
           if self._prologue is not None else None)
    bs, grads, metrics_list, target = state["batch_stats"], None, [], None
    keys = jax.random.split(rng, genomes.shape[0])
    for i in range(genomes.shape[0]):
      if target is None:
        target_in, use = self._no_target(batch["image"].shape[0])
      else:
        target_in, use = target, parallel.replicate(self.mesh, np.float32(1.0))
      g, bs, m, kd_target = self.subnet_grad(state["params"], bs, aux, batch, genomes[i],
                                             target_in, use, keys[i])
      if i == 0:
        target = kd_target
      grads = g if grads is None else self._add(grads, g)
      metrics_list.append(m)
    out = self.backbone._call("optimizer_update", self._update, state, grads, bs, metrics_list)
    self.step_seconds.append(time.perf_counter() - t0)
    return out


def _join(backbone, tail, dense):
  from evonas_jax.engine.tail import join_student
  return join_student(backbone, tail, dense)
