"""Gradient-based baseline proxies (NASLib / Suite-Zero definitions; research/zc_proxies.md §3).

All use the mean cross-entropy of the batch, BatchNorm with batch statistics, and the conv/linear
kernels only (biases and norm params excluded). Higher = better for each (GraSP is negated as in
NASLib so that higher is better).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from evonas_jax.proxies.common import ce_loss, weight_grads, weight_loss_fn
from evonas_jax.proxies.registry import register


@register("grad_norm")
def grad_norm(model, params, masks, batch, rng):
  """Sum over layers of the Frobenius norm of d loss / d W_l."""
  _, g = weight_grads(model, params, masks, batch)
  return sum(jnp.sqrt(jnp.sum(gl ** 2)) for gl in g)


@register("snip")
def snip(model, params, masks, batch, rng):
  """Sum |W * dL/dW| (connection sensitivity)."""
  w, g = weight_grads(model, params, masks, batch)
  return sum(jnp.sum(jnp.abs(wl * gl)) for wl, gl in zip(w, g))


@register("grasp")
def grasp(model, params, masks, batch, rng):
  """Sum of -W * (H g), g = dL/dW, H the Hessian of L w.r.t. the kernels (forward-over-reverse).

  Same definition and sign as NASLib/Suite-Zero (-theta * Hg, summed signed). Note on NB201: a
  conv followed by train-mode BN is scale invariant, so its term is exactly |g_l|^2 (up to BN's
  eps; tests/test_proxies.py checks it); only the layers without BN (classifier, reduction 1x1
  shortcuts) carry a real curvature term, which is negative at init. On the reduced C=8, N=1 bench
  net those few layers nearly cancel the BN part (measured on 48 archs: BN part +2.95, classifier +
  shortcuts -2.42 on average), and the classifier term decides the ranking, hence the low agreement
  with Suite-Zero's C=16, N=5 values (15 cells' worth of |g|^2 terms there)."""
  f = weight_loss_fn(model, params, masks, batch)
  w = model.weights(params)
  g = jax.grad(f)(w)
  _, hg = jax.jvp(jax.grad(f), (w,), (g,))
  return sum(jnp.sum(-wl * hl) for wl, hl in zip(w, hg))


FISHER_WEIGHTINGS = ("param", "channel")


def _batch_axes(model, params, masks, x):
  """Per probe leaf: the index of its batch axis. Leaves of scanned layers (nn.scan over cells or
  blocks) carry leading stack axes, (N, B, ...); the batch axis is the one that changes size
  with the batch (found on shapes only, via eval_shape)."""
  def shapes(b):
    xs = jax.ShapeDtypeStruct((b,) + x.shape[1:], x.dtype)
    return jax.eval_shape(lambda xx: model.zero_perturbations(params, masks, xx), xs)
  s1, s2 = shapes(x.shape[0]), shapes(x.shape[0] + 1)

  def axis(a, b):
    diff = [i for i, (p, q) in enumerate(zip(a.shape, b.shape)) if p != q]
    if len(diff) != 1:
      raise ValueError(f"fisher: cannot find the batch axis of a probe of shape {a.shape}")
    return diff[0]
  return jax.tree.map(axis, s1, s2)


def _path_names(path):
  return tuple(str(getattr(k, "key", k)) for k in path)


@register("fisher")
def fisher(model, params, masks, batch, rng, weighting: str = "param"):
  """Fisher (Turner et al.; NASLib/Suite-Zero). For every conv/linear output a (B, ..., C) and its
  gradient g = dL/da (mean CE, BN in train mode), per sample and output channel
  f_nc = sum_spatial a * g, then F_c = 0.5 * mean_n f_nc^2.

  weighting="param" (default, Suite-Zero's values): NASLib broadcasts each channel's F_c to all
    of that channel's weights before summing, so the score is sum_layers sum_c fan_in_l * F_c
    (fan_in = C_in * kh * kw of the full kernel; exact for fixed-width spaces such as NB201).
  weighting="channel": the plain sum over channels, sum_layers sum_c F_c.
  Layers of scanned stages (leaves (N, B, ...)) are N separate layers.
  """
  if weighting not in FISHER_WEIGHTINGS:
    raise ValueError(f"fisher: weighting={weighting!r}; allowed: {FISHER_WEIGHTINGS}")
  x, y = batch["image"], batch["label"]
  pert = model.zero_perturbations(params, masks, x)

  def loss(p):
    logits, outs = model.apply_probed(params, p, masks, x)
    return ce_loss(logits, y), outs

  grads, outs = jax.grad(loss, has_aux=True)(pert)
  bax = {_path_names(k): v for k, v in
         jax.tree_util.tree_flatten_with_path(_batch_axes(model, params, masks, x))[0]}
  # Pair each output with its gradient: convention `perturb(P)` <-> `sow("outs", P + "_out")`.
  def key(path):
    names = _path_names(path)
    return names[:-1] + (names[-1].removesuffix("_out"),)
  acts = {key(k): v for k, v in jax.tree_util.tree_flatten_with_path(outs)[0]}
  gs = {_path_names(k): v for k, v in jax.tree_util.tree_flatten_with_path(grads)[0]}
  if set(acts) != set(gs):
    raise ValueError("fisher: probed outputs and perturbations do not match")
  total = 0.0
  for path, a in acts.items():
    ax = bax[path]
    stack = a.shape[:ax]
    n = int(np.prod(stack, dtype=int))
    # (stack..., B, spatial..., C) -> (S, B, spatial, C) -> per-sample per-channel sums (S, B, C).
    f_nc = (a * gs[path]).reshape(n, a.shape[ax], -1, a.shape[-1]).sum(axis=2)
    per_channel = 0.5 * jnp.mean(f_nc ** 2, axis=1)  # (S, C)
    if weighting == "param":
      if model.probe_kernel is None:
        raise ValueError(f"fisher: weighting='param' needs model.probe_kernel ({model.name})")
      node = params
      for k in model.probe_kernel(path):
        node = node[k]
      per_channel = per_channel * int(np.prod(node.shape[ax:-1], dtype=int))
    total = total + jnp.sum(per_channel)
  return total


@register("jacov")
def jacov(model, params, masks, batch, rng):
  """-sum(log(l + k) + 1/(l + k)) over eigenvalues l of corrcoef of the per-sample input Jacobians
  of sum(logits); k = 1e-5. Eigenvalues are clipped at 0 (round-off can make them slightly
  negative, which would give NaN)."""
  x = batch["image"]
  jac = jax.grad(lambda xx: model.apply(params, masks, xx).sum())(x).reshape(x.shape[0], -1)
  jac = jac - jac.mean(axis=1, keepdims=True)
  jac = jac / jnp.maximum(jnp.linalg.norm(jac, axis=1, keepdims=True), 1e-30)
  corr = jac @ jac.T
  lam = jnp.clip(jnp.linalg.eigvalsh(corr), 0.0, None)
  k = 1e-5
  return -jnp.sum(jnp.log(lam + k) + 1.0 / (lam + k))


# All-ones input scaled by 2^-100: with |weights|, no BN and a positive input every ReLU is the
# identity, so the score is linear in the input scale (the only bias sits after the last kernel
# and does not enter any kernel's gradient). The scale keeps float32 from overflowing on the big
# NB201 cells (Suite-Zero's log-synflow reaches 115, e^115 > float32 max); its log is added back.
_SYNFLOW_LOG2_SCALE = -100


@register("synflow")
def synflow(model, params, masks, batch, rng):
  """sign-preserving log of sum_W |W| * dR/d|W|, R = sum(outputs) of the |params| network without
  BN on one all-ones input (NASLib synflow + the log that Suite-Zero's values carry)."""
  abs_params = jax.tree.map(jnp.abs, params)
  x = jnp.full((1,) + batch["image"].shape[1:], 2.0 ** _SYNFLOW_LOG2_SCALE, jnp.float32)
  w = model.weights(abs_params)

  def r(ws):
    return model.apply(model.with_weights(abs_params, ws), masks, x, bn=False).sum()

  g = jax.grad(r)(w)
  s = sum(jnp.sum(wl * gl) for wl, gl in zip(w, g))
  logs = jnp.log(jnp.maximum(s, 1e-38)) - _SYNFLOW_LOG2_SCALE * jnp.log(2.0)
  return jnp.where(s > 0, logs, 0.0)
