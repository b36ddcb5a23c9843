"""The data-parallel train step: `jax.shard_map` over the mesh's `data` axis.

A step trains k subnets on one batch (research §3.5: forward/backward each subnet, accumulate the
gradients, divide by k, one optimizer update). It is built from three compiled pieces:

  prologue(extra, batch)                          -> aux        e.g. the frozen teacher's outputs
  subnet_grad(params, bs, aux, batch, genome, target, rng)
                                                  -> grads, bs, metrics, logits
  update(state, grads_sum, bs, metrics_list)      -> state, metrics

and a Python loop over the k subnets. Compiling one subnet's forward/backward and looping on the
host keeps the compile independent of k: unrolling k=2 subnets into one XLA program took over 8
minutes to compile on 2 CPU cores (and lax.scan over the network made the backward ~30x slower).
Masked mode: the subnet is data (`genome`), so one compile serves every subnet.

Inside shard_map every device computes the loss of its shard of the batch; gradients and metrics
are averaged over `data` (all-reduce) and BatchNorm statistics are synchronised by the modules'
`bn_axis_name="data"`, so an N-device step equals the 1-device step on the global batch.
A step whose loss or gradient is not finite leaves the state untouched and reports
`metrics["finite"] = 0`; the trainer stops on it, so a checkpoint never holds NaNs.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from evonas_jax import parallel
from evonas_jax.parallel import DATA_AXIS

COMPUTE_DTYPES = ("float32", "bfloat16")


def cast_floats(tree, dtype):
  """Casts floating leaves (params/activations) to `dtype`; fp32 master params stay untouched."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def _mean_over_data(g):
  """All-reduce mean of a per-device gradient over `data`.

  The params enter shard_map replicated (device-invariant); with check_vma, differentiating
  w.r.t. them already psums the cotangent over `data` (the transpose of the implicit broadcast),
  so such a gradient only needs dividing by the axis size; a pmean would count it N times
  (measured: 8x the 1-device gradient on 8 devices). A gradient still varying over `data` gets
  the explicit pmean.
  """
  if DATA_AXIS in parallel.varying_axes(g):
    return lax.pmean(g, DATA_AXIS)
  return g / lax.axis_size(DATA_AXIS)


def make_update(tx: optax.GradientTransformation) -> Callable:
  """update(state, grads_sum, batch_stats, metrics_list) -> (state, metrics): averages the k
  subnets' gradients and metrics and applies one optimizer step; a non-finite loss or gradient
  keeps the old state and reports metrics["finite"] = 0."""
  def update(state, grads, bs, metrics_list):
    k = len(metrics_list)
    grads = jax.tree.map(lambda g: g / k, grads)
    metrics = {name: jnp.mean(jnp.stack([m[name] for m in metrics_list]))
               for name in metrics_list[0]}
    metrics["loss_first"] = metrics_list[0]["loss"]
    metrics["loss_last"] = metrics_list[-1]["loss"]
    gnorm = optax.global_norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(gnorm)
    for m in metrics_list:
      finite &= jnp.isfinite(m["loss"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"params": params, "batch_stats": bs, "opt_state": opt_state}
    # Non-finite step: keep the old state (the last good one) and report it.
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    return new, {**metrics, "grad_norm": gnorm, "finite": finite.astype(jnp.float32)}
  return update


class ShardedTrainStep:
  """step(state, extra, batch, genomes (k, G) numpy, rng) -> (state, metrics).

  loss_fn(params, batch_stats, aux, batch, genome (G,), target, use_target, rng)
      -> (loss, (batch_stats, metrics, logits))
  where `target` is the first subnet's logits of this step (for in-place distillation; zeros
  for the first subnet, with use_target = 0). prologue_fn(extra, batch) -> aux (per-device
  pytree, e.g. teacher logits and features) or None.
  state = {"params", "batch_stats", "opt_state"}, replicated; batch sharded over `data`.
  """

  def __init__(self, loss_fn: Callable, tx: optax.GradientTransformation, mesh: Mesh,
               prologue_fn: Callable | None = None, num_classes: int | None = None,
               target_shape: tuple | None = None):
    self.mesh, self.tx = mesh, tx
    dp = P(DATA_AXIS)

    def grad_dev(params, bs, aux, batch, genome, target, use_target, rng):
      rng = jax.random.fold_in(rng, lax.axis_index(DATA_AXIS))
      (loss, (bs, metrics, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, bs, aux, batch, genome, target, use_target, rng)
      grads = jax.tree.map(_mean_over_data, grads)
      metrics = lax.pmean({"loss": loss, **metrics}, DATA_AXIS)
      return grads, bs, metrics, logits

    self._grad = jax.jit(jax.shard_map(
        grad_dev, mesh=mesh, in_specs=(P(), P(), dp, dp, P(), dp, P(), P()),
        out_specs=(P(), P(), P(), dp)))
    self._prologue = None
    if prologue_fn is not None:
      self._prologue = jax.jit(jax.shard_map(prologue_fn, mesh=mesh, in_specs=(P(), dp),
                                             out_specs=dp))
    self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=(0,))

    self._update = jax.jit(make_update(tx), donate_argnums=(0,))
    # Per-example shape of the in-place KD target (the task's kd_target: (K,) logits for
    # classification, (H, W) depth, (H, W, K) segmentation logits).
    self.target_shape = tuple(target_shape) if target_shape is not None else (num_classes,)

  def _no_target(self, global_batch: int):
    """(zero target, use_target=0) for a step's first subnet; built once per batch size."""
    cache = self.__dict__.setdefault("_no_target_cache", {})
    if global_batch not in cache:
      zeros = np.zeros((parallel.local_rows(self.mesh, global_batch), *self.target_shape),
                       np.float32)
      cache[global_batch] = (parallel.shard_batch(self.mesh, {"t": zeros})["t"],
                             parallel.replicate(self.mesh, np.float32(0.0)))
    return cache[global_batch]

  def __call__(self, state, extra, batch, genomes, rng):
    genomes = np.asarray(genomes, np.int32)
    aux = self._prologue(extra, batch) if self._prologue is not None else None
    bs, grads, metrics_list, target = state["batch_stats"], None, [], None
    keys = jax.random.split(rng, genomes.shape[0])
    for i in range(genomes.shape[0]):
      g_i = parallel.replicate(self.mesh, genomes[i])
      if target is None:
        target_in, use = self._no_target(batch["image"].shape[0])
      else:
        target_in, use = target, parallel.replicate(self.mesh, np.float32(1.0))
      g, bs, m, logits = self._grad(state["params"], bs, aux, batch, g_i, target_in, use,
                                    keys[i])
      if i == 0:
        target = logits
      grads = g if grads is None else self._add(grads, g)
      metrics_list.append(m)
    return self._update(state, grads, bs, metrics_list)
