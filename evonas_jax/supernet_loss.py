"""Per-step losses: the teacher's cross-entropy and the supernet's CA-DDKD loss (research §3.3).

For each of the step's k subnets (masked mode, same batch), with P = projected student feature
and T = the frozen teacher's feature map:

  L_i = (1 - λ)·CE + λ·KD + α1·spatial(P_spat, T) + α2·frequency(P_freq, T)

and the step loss is mean_i L_i (the official code divides by the number of subnets). KD is the
KL between the teacher's and the subnet's softened logits. With the sandwich rule the first
subnet is the largest and, beyond the official code, the other subnets' KD target is the
largest subnet's (stop-gradient) logits instead of the teacher's (in-place distillation); the
feature losses still use the teacher. Without a teacher the loss is CE (plus in-place KD for
sandwich sampling).

All losses are computed per device on its shard; the shard_map step averages them over `data`.
Spatial/frequency losses divide by the local batch size, so their mean over devices is the
global-batch value.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from evonas_jax import distill
from evonas_jax.space import SearchSpace, genome_to_masks
from evonas_jax.steps import cast_floats, cross_entropy


@dataclasses.dataclass(frozen=True)
class DistillSetup:
  """What the supernet loss needs besides the student: all static."""
  teacher: Any | None                   # ViTTeacher module (frozen) or None
  projector: Any | None                 # AttentionProjector module (spatial and frequency copies)
  from_store: bool = False              # teacher outputs come with the batch ("t_logits", "t_feat")
  student_stage: int = -1               # which stage's output is distilled
  kd_ratio: float = 0.0                 # λ
  alpha_spatial: float = 0.0            # α1
  alpha_frequency: float = 0.0          # α2
  temperature: float = 1.0
  reduction: str = "sum"
  inplace_kd: bool = False              # sandwich rule: KD from the largest (first) subnet
  inplace_kd_ratio: float = 0.5         # λ for the in-place KD term
  compute_dtype: Any = None             # None = float32


def make_teacher_loss(teacher, compute_dtype=None) -> Callable:
  """Single-network loss for the teacher stage (signature of steps.ShardedTrainStep)."""

  def loss_fn(params, batch_stats, aux, batch, genome, target, use_target, rng):
    del aux, genome, target, use_target
    p, x = params, batch["image"]
    if compute_dtype is not None:
      p, x = cast_floats(p, compute_dtype), x.astype(compute_dtype)
    logits, _ = teacher.apply({"params": p}, x, train=True, rngs={"dropout": rng})
    logits = logits.astype(jnp.float32)
    loss = cross_entropy(logits, batch["label"])
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, (batch_stats, {"ce": loss, "train_acc": acc}, logits)
  return loss_fn


def make_teacher_prologue(setup: DistillSetup) -> Callable | None:
  """prologue(teacher_vars, batch) -> (teacher logits (B, K), feature (B, Ht, Wt, Ct)), frozen."""
  if setup.from_store:
    def from_batch(teacher_vars, batch):
      del teacher_vars
      return batch["t_logits"].astype(jnp.float32), batch["t_feat"].astype(jnp.float32)
    return from_batch
  if setup.teacher is None:
    return None

  def prologue(teacher_vars, batch):
    x = batch["image"]
    if setup.compute_dtype is not None:
      teacher_vars, x = cast_floats(teacher_vars, setup.compute_dtype), x.astype(setup.compute_dtype)
    logits, feat = setup.teacher.apply(teacher_vars, x, train=False)
    return (jax.lax.stop_gradient(logits.astype(jnp.float32)),
            jax.lax.stop_gradient(feat.astype(jnp.float32)))
  return prologue


def make_supernet_loss(student, space: SearchSpace, setup: DistillSetup) -> Callable:
  """Loss of ONE subnet: loss_fn(params, batch_stats, aux, batch, genome (G,), target, use_target,
  rng) -> (L_i, (batch_stats, metrics, logits)).

  params = {"student", ["proj_spatial", "proj_frequency"]}; batch_stats likewise (projectors
  carry BatchNorm). aux = (teacher logits, teacher feature) from `make_teacher_prologue` or None.
  target/use_target: the step's first (largest) subnet logits for in-place KD (sandwich rule).
  """
  s = setup
  has_teacher = s.teacher is not None or s.from_store
  use_feat = has_teacher and (s.alpha_spatial > 0 or s.alpha_frequency > 0)
  use_teacher_kd = has_teacher and s.kd_ratio > 0

  def loss_fn(params, batch_stats, aux, batch, genome, target, use_target, rng):
    images, labels = batch["image"], batch["label"]
    if s.compute_dtype is not None:
      params, images = cast_floats(params, s.compute_dtype), images.astype(s.compute_dtype)
    t_logits, t_feat = aux if aux is not None else (None, None)
    bs = dict(batch_stats)
    masks = genome_to_masks(space, genome)
    (logits, feats), upd = student.apply(
        {"params": params["student"], "batch_stats": bs["student"]}, images, masks,
        train=True, return_features=True, rngs={"dropout": rng}, mutable=["batch_stats"])
    bs["student"] = upd["batch_stats"]
    logits = logits.astype(jnp.float32)
    ce = cross_entropy(logits, labels)
    zero = jnp.zeros(())
    # Output KD target: the teacher, or (sandwich, not the first subnet) the largest subnet.
    teacher_kd = distill.kd_kl(logits, t_logits, s.temperature) if use_teacher_kd else zero
    if s.inplace_kd:
      inplace = distill.kd_kl(logits, jax.lax.stop_gradient(target), s.temperature)
      kd = jnp.where(use_target > 0, inplace, teacher_kd)
      lam = jnp.where(use_target > 0, s.inplace_kd_ratio, s.kd_ratio if use_teacher_kd else 0.0)
    else:
      kd, lam = teacher_kd, (s.kd_ratio if use_teacher_kd else 0.0)
    spat = freq = zero
    if use_feat:
      f = feats[s.student_stage]
      for name, w in (("proj_spatial", s.alpha_spatial), ("proj_frequency", s.alpha_frequency)):
        if w <= 0:
          continue
        p, u = s.projector.apply({"params": params[name], "batch_stats": bs[name]}, f,
                                 train=True, mutable=["batch_stats"])
        bs[name] = u["batch_stats"]
        p = p.astype(jnp.float32)
        if name == "proj_spatial":
          spat = distill.spatial_loss(p, t_feat, reduction=s.reduction)
        else:
          freq = distill.frequency_loss(p, t_feat, reduction=s.reduction)
    a1, a2 = (s.alpha_spatial, s.alpha_frequency) if use_feat else (0.0, 0.0)
    if s.inplace_kd:   # λ depends on the traced use_target: the same formula, written out
      total = (1.0 - lam) * ce + lam * kd + a1 * spat + a2 * freq
    else:
      total, _ = distill.ddkd_total(ce, kd, spat, freq, kd_ratio=lam, alpha_spatial=a1,
                                    alpha_frequency=a2)
    metrics = {"ce": ce, "kd": kd, "spatial": spat, "frequency": freq,
               "train_acc": jnp.mean(jnp.argmax(logits, -1) == labels)}
    return total, (bs, metrics, logits)
  return loss_fn
