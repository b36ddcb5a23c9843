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
from evonas_jax.steps import cast_floats
from evonas_jax.tasks import Classification


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
  task: Any = None                      # evonas_jax.tasks object; None = classification


def _task(setup_or_task):
  t = getattr(setup_or_task, "task", setup_or_task)
  return Classification() if t is None else t


def _split_features(out):
  """Student output with return_features=True -> (prediction, stage features): EvoNet returns
  (logits, feats), DenseEvoNet a dict holding "features"."""
  if isinstance(out, dict):
    out = dict(out)
    return out, out.pop("features")
  return out


def make_teacher_loss(teacher, compute_dtype=None, task=None) -> Callable:
  """Single-network loss for the teacher stage (signature of steps.ShardedTrainStep): the task's
  supervised loss (CE for classification) on the teacher's output."""
  task = _task(task)

  def loss_fn(params, batch_stats, aux, batch, genome, target, use_target, rng):
    del aux, genome, target, use_target
    p, x = params, batch["image"]
    if compute_dtype is not None:
      p, x = cast_floats(p, compute_dtype), x.astype(compute_dtype)
    out, _ = teacher.apply({"params": p}, x, train=True, rngs={"dropout": rng})
    loss, metrics = task.task_loss(out, batch)
    return loss, (batch_stats, metrics, task.kd_target(out))
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

  task = _task(setup)

  def prologue(teacher_vars, batch):
    x = batch["image"]
    if setup.compute_dtype is not None:
      teacher_vars, x = cast_floats(teacher_vars, setup.compute_dtype), x.astype(setup.compute_dtype)
    out, feat = setup.teacher.apply(teacher_vars, x, train=False)
    return (jax.lax.stop_gradient(task.kd_target(out)),
            jax.lax.stop_gradient(feat.astype(jnp.float32)))
  return prologue


def make_subnet_objective(setup: DistillSetup) -> Callable:
  """The CA-DDKD objective of one subnet given its outputs (shared by masked mode and the
  compiled engine, `evonas_jax.engine`):

  objective(params, batch_stats, aux, batch, out, feats, target, use_target)
      -> (L_i, (batch_stats, metrics, kd_target))

  out: the student's prediction (logits (B, K) or the dense head's dict); feats: its four stage
  features (what `return_features` gives). params/batch_stats: only the projector entries
  ("proj_spatial", "proj_frequency") are read; batch_stats comes back with theirs updated.
  """
  s = setup
  task = _task(setup)
  has_teacher = s.teacher is not None or s.from_store
  use_feat = has_teacher and (s.alpha_spatial > 0 or s.alpha_frequency > 0)
  use_teacher_kd = has_teacher and s.kd_ratio > 0

  def objective(params, batch_stats, aux, batch, out, feats, target, use_target):
    t_logits, t_feat = aux if aux is not None else (None, None)
    bs = dict(batch_stats)
    ce, task_metrics = task.task_loss(out, batch)
    zero = jnp.zeros(())
    # Output KD target: the teacher, or (sandwich, not the first subnet) the largest subnet.
    teacher_kd = task.kd_loss(out, t_logits, s.temperature) if use_teacher_kd else zero
    if s.inplace_kd:
      inplace = task.kd_loss(out, jax.lax.stop_gradient(target), s.temperature)
      kd = jnp.where(use_target > 0, inplace, teacher_kd)
      lam = jnp.where(use_target > 0, s.inplace_kd_ratio, s.kd_ratio if use_teacher_kd else 0.0)
    else:
      kd, lam = teacher_kd, (s.kd_ratio if use_teacher_kd else 0.0)
    spat = freq = zero
    if use_feat:
      # The projectors run in float32 whatever compute_dtype: at initialisation their output
      # varies across teacher cells by ~5e-5 of its magnitude, below bfloat16's resolution
      # (2^-8), so in bf16 every cell came out equal; the frequency loss's mean-centred map was
      # then exactly 0 (loss = the number of cells) and the step's gradient norm ~1e11 instead of
      # ~25 (measured on the tiny supernet, compiled engine): its clipped update was that noise.
      f = feats[s.student_stage].astype(jnp.float32)
      for name, w in (("proj_spatial", s.alpha_spatial), ("proj_frequency", s.alpha_frequency)):
        if w <= 0:
          continue
        p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params[name])
        p, u = s.projector.apply({"params": p32, "batch_stats": bs[name]}, f,
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
    metrics = {**task_metrics, "kd": kd, "spatial": spat, "frequency": freq}
    return total, (bs, metrics, task.kd_target(out))
  return objective


def make_supernet_loss(student, space: SearchSpace, setup: DistillSetup) -> Callable:
  """Loss of ONE subnet: loss_fn(params, batch_stats, aux, batch, genome (G,), target, use_target,
  rng) -> (L_i, (batch_stats, metrics, kd_target)).

  params = {"student", ["proj_spatial", "proj_frequency"]}; batch_stats likewise (projectors
  carry BatchNorm). aux = (teacher output, teacher feature) from `make_teacher_prologue` or None;
  the teacher output is the task's KD target (logits; depth map; segmentation logits).
  target/use_target: the step's first (largest) subnet's KD target for in-place KD (sandwich).
  The task (setup.task) supplies the supervised loss ("CE" below) and the KD form.
  """
  s = setup
  objective = make_subnet_objective(setup)

  def loss_fn(params, batch_stats, aux, batch, genome, target, use_target, rng):
    images = batch["image"]
    if s.compute_dtype is not None:
      params, images = cast_floats(params, s.compute_dtype), images.astype(s.compute_dtype)
    bs = dict(batch_stats)
    masks = genome_to_masks(space, genome)
    out, upd = student.apply(
        {"params": params["student"], "batch_stats": bs["student"]}, images, masks,
        train=True, return_features=True, rngs={"dropout": rng}, mutable=["batch_stats"])
    out, feats = _split_features(out)
    bs["student"] = upd["batch_stats"]
    return objective(params, bs, aux, batch, out, feats, target, use_target)
  return loss_fn
