"""CA-DDKD losses: dual-domain feature distillation and output-level KD (research/evonas.md §3.3).

Feature maps are channels-last, P (projected student) and T (teacher) both (N, H, W, C).

- spatial domain:   L_spat = Σ ‖n_c(P) − n_c(T)‖² / N
- frequency domain: L_freq = Σ ‖n_c(Z(P)) − n_c(Z(T))‖² / N,  Z = iDCT(DCT(x) with (0,0) zeroed)

n_c is the L2 normalisation over channels at every pixel. Σ is a sum over C·H·W and the batch
("sum": depth/segmentation) or a mean over every element ("mean": detection; still divided by N
afterwards, as the official code does: the α weights compensate). With the orthonormal DCT-II /
DCT-III pair, Z(x) is exactly x minus its per-channel spatial mean; `frequency_loss(via="mean")`
uses that closed form and `via="dct"` the explicit transform (tests check they agree).

Output-level KD: `kd_kl` (classification logits), `silog_loss` (depth), `pixel_kl` (segmentation).
Every loss is registered by name in `LOSSES`; `ddkd_total` combines them with the configured weights.
"""
from __future__ import annotations

import functools
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("sum", "mean")
FREQ_VIA = ("mean", "dct")

LOSSES: dict[str, Callable] = {}


def register_loss(name: str):
  """Decorator: registers a loss function under `name` in `LOSSES`."""
  def deco(fn):
    if name in LOSSES:
      raise ValueError(f"loss {name!r} is already registered")
    LOSSES[name] = fn
    return fn
  return deco


def get_loss(name: str) -> Callable:
  """The registered loss `name`; a clear error lists the known names."""
  if name not in LOSSES:
    raise ValueError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
  return LOSSES[name]


# ---------------------------------------------------------------------------------------- DCT


@functools.lru_cache(maxsize=64)
def _dct_matrix_np(n: int) -> np.ndarray:
  k = np.arange(n)[:, None]
  i = np.arange(n)[None, :]
  d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  d[0] /= np.sqrt(2.0)  # Row 0 scaled by sqrt(1/n): this makes the matrix orthonormal.
  return d


def dct_matrix(n: int) -> jnp.ndarray:
  """Orthonormal DCT-II matrix D (n, n): X[k] = Σ_i D[k, i] x[i]; its inverse (DCT-III) is D.T."""
  if not isinstance(n, numbers.Integral) or n < 1:
    raise ValueError(f"dct_matrix: n must be a positive int; got {n!r}")
  return jnp.asarray(_dct_matrix_np(int(n)), jnp.float32)


def _apply_along(x, axes, inverse: bool):
  for a in axes:
    d = dct_matrix(x.shape[a]).astype(x.dtype)
    x = jnp.moveaxis(x, a, -1)
    # HIGHEST: on GPUs the default fp32 matmul may use TF32, which would break DCT∘iDCT = id.
    x = jnp.matmul(x, d if inverse else d.T, precision=jax.lax.Precision.HIGHEST)
    x = jnp.moveaxis(x, -1, a)
  return x


def dct2(x, axes=(1, 2)):
  """2-D orthonormal DCT-II over `axes` (default H, W of NHWC); same shape as x.
  Equals scipy.fft.dctn(x, type=2, axes=axes, norm="ortho")."""
  return _apply_along(x, axes, inverse=False)


def idct2(x, axes=(1, 2)):
  """Inverse of `dct2` (orthonormal DCT-III over `axes`)."""
  return _apply_along(x, axes, inverse=True)


def zero_dc_frequency(x, axes=(1, 2)):
  """x (N, H, W, C) -> idct2(dct2(x) with the (0, 0) coefficient zeroed), same shape.
  Mathematically x − mean_HW(x) (tested)."""
  y = dct2(x, axes)
  idx = [slice(None)] * y.ndim
  for a in axes:
    idx[a] = 0
  y = y.at[tuple(idx)].set(0.0)
  return idct2(y, axes)


def subtract_spatial_mean(x, axes=(1, 2)):
  """x (N, H, W, C) -> x − mean over `axes` (the closed form of `zero_dc_frequency`)."""
  return x - jnp.mean(x, axis=axes, keepdims=True)


# ------------------------------------------------------------------------------ feature losses


def channel_normalize(x, eps: float = 1e-12):
  """L2-normalises x (..., C) over the last axis at every position: x / max(‖x‖, eps).

  Written as x / sqrt(max(‖x‖², eps²)) so an all-zero pixel gives a zero output *and* a finite
  gradient (sqrt'(0) would be inf)."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _check_pair(p, t, name: str):
  if p.shape != t.shape or p.ndim != 4:
    raise ValueError(f"{name}: student and teacher features must both be (N, H, W, C) with the same "
                     f"shape; got {p.shape} and {t.shape}")


def _reduce(sq, reduction: str, name: str):
  """sq (N, H, W, C) squared errors -> scalar: (sum or mean over everything) / N."""
  if reduction not in REDUCTIONS:
    raise ValueError(f"{name}: reduction={reduction!r} not in {REDUCTIONS}")
  n = sq.shape[0]
  total = jnp.sum(sq) if reduction == "sum" else jnp.mean(sq)
  return total / n


@register_loss("spatial")
def spatial_loss(p, t, reduction: str = "sum"):
  """Spatial-domain loss: p, t (N, H, W, C) -> scalar Σ ‖n_c(p) − n_c(t)‖² / N (unweighted)."""
  _check_pair(p, t, "spatial_loss")
  sq = jnp.square(channel_normalize(p.astype(jnp.float32)) - channel_normalize(t.astype(jnp.float32)))
  return _reduce(sq, reduction, "spatial_loss")


@register_loss("frequency")
def frequency_loss(p, t, reduction: str = "sum", via: str = "mean"):
  """Frequency-domain loss: the spatial loss of the DC-free features (unweighted).

  p, t (N, H, W, C) -> scalar. via="mean" subtracts the spatial mean (exact and cheap);
  via="dct" goes through dct2 / idct2 with the (0, 0) coefficient zeroed."""
  _check_pair(p, t, "frequency_loss")
  if via not in FREQ_VIA:
    raise ValueError(f"frequency_loss: via={via!r} not in {FREQ_VIA}")
  f = subtract_spatial_mean if via == "mean" else zero_dc_frequency
  p, t = p.astype(jnp.float32), t.astype(jnp.float32)
  return spatial_loss(f(p), f(t), reduction)


# -------------------------------------------------------------------------------- output KD


def _masked_mean(values, mask):
  """values (N,), mask (N,) or None -> Σ m·v / max(Σ m, 1)."""
  if mask is None:
    return jnp.mean(values)
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@register_loss("kd_kl")
def kd_kl(student_logits, teacher_logits, temperature: float = 1.0, mask=None):
  """Classification KD: mean_n KL(softmax(t_n/T) ‖ softmax(s_n/T)) · T².

  student_logits, teacher_logits (N, K); mask (N,) optional (1 = real example, 0 = padding).
  The T² factor (Hinton et al.) keeps the gradient scale independent of T. The teacher side is
  not differentiated (stop_gradient): the teacher is frozen."""
  if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
    raise ValueError(f"kd_kl: logits must both be (N, K); got {student_logits.shape} and {teacher_logits.shape}")
  if temperature <= 0:
    raise ValueError(f"kd_kl: temperature must be > 0; got {temperature}")
  t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
  s = student_logits.astype(jnp.float32) / temperature
  log_pt = jax.nn.log_softmax(t, axis=-1)
  log_ps = jax.nn.log_softmax(s, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return _masked_mean(kl, mask) * temperature ** 2


@register_loss("silog")
def silog_loss(pred_depth, teacher_depth, valid_mask=None, variance_focus: float = 0.85,
               min_depth: float = 1e-3, eps: float = 1e-8):
  """Depth KD: SILog = 10 · sqrt(mean(g²) − variance_focus · mean(g)²), g = log d̂ − log d.

  pred_depth, teacher_depth (N, H, W) or (N, H, W, 1), positive; valid_mask same shape, bool
  (default: teacher_depth > min_depth, the official choice). Means run over the valid pixels of
  the whole batch. Invalid pixels enter log() as 1 so they give neither NaN nor gradient; `eps`
  keeps sqrt differentiable at a perfect match. The teacher map must already be resized to the
  student resolution."""
  if pred_depth.shape != teacher_depth.shape:
    raise ValueError(f"silog_loss: pred_depth {pred_depth.shape} and teacher_depth {teacher_depth.shape} differ")
  teacher_depth = jax.lax.stop_gradient(teacher_depth.astype(jnp.float32))
  pred_depth = pred_depth.astype(jnp.float32)
  if valid_mask is None:
    valid_mask = teacher_depth > min_depth
  if valid_mask.shape != pred_depth.shape:
    raise ValueError(f"silog_loss: valid_mask {valid_mask.shape} must match pred_depth {pred_depth.shape}")
  valid = valid_mask.astype(bool)
  g = jnp.where(valid, jnp.log(jnp.where(valid, pred_depth, 1.0)) - jnp.log(jnp.where(valid, teacher_depth, 1.0)),
                0.0)
  n = jnp.maximum(jnp.sum(valid), 1)
  mean_g = jnp.sum(g) / n
  mean_g2 = jnp.sum(g * g) / n
  return 10.0 * jnp.sqrt(jnp.maximum(mean_g2 - variance_focus * mean_g ** 2, 0.0) + eps)


@register_loss("pixel_kl")
def pixel_kl(student_logits, teacher_probs, ignore_mask=None, temperature: float = 1.0):
  """Segmentation KD: KL(p_t ‖ softmax(s/T)) averaged over non-ignored pixels, times T².

  student_logits (N, H, W, K); teacher_probs (N, H, W, K) (clamped at >= 0 and renormalised
  over K, as the official code does with the Mask2Former outputs); ignore_mask (N, H, W) bool,
  True = pixel ignored. Only the student is tempered: p_t is already a distribution."""
  if student_logits.shape != teacher_probs.shape or student_logits.ndim != 4:
    raise ValueError(f"pixel_kl: student_logits and teacher_probs must both be (N, H, W, K); got "
                     f"{student_logits.shape} and {teacher_probs.shape}")
  if temperature <= 0:
    raise ValueError(f"pixel_kl: temperature must be > 0; got {temperature}")
  pt = jnp.maximum(jax.lax.stop_gradient(teacher_probs.astype(jnp.float32)), 0.0)
  pt = pt / jnp.maximum(jnp.sum(pt, axis=-1, keepdims=True), 1e-12)
  log_ps = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  # xlogy gives 0·log 0 = 0 for classes the teacher rules out.
  kl = jnp.sum(jax.scipy.special.xlogy(pt, pt) - pt * log_ps, axis=-1)        # (N, H, W)
  if ignore_mask is None:
    keep = None
  else:
    if ignore_mask.shape != kl.shape:
      raise ValueError(f"pixel_kl: ignore_mask {ignore_mask.shape} must be (N, H, W) = {kl.shape}")
    keep = jnp.logical_not(ignore_mask.astype(bool)).reshape(-1)
  return _masked_mean(kl.reshape(-1), keep) * temperature ** 2


# ------------------------------------------------------------------------------------ total


def _check_weight(name: str, v, upper: float | None = None):
  if isinstance(v, numbers.Real) and not isinstance(v, bool):
    if not (v >= 0 and (upper is None or v <= upper)) or not np.isfinite(v):
      rng = f"[0, {upper}]" if upper is not None else ">= 0"
      raise ValueError(f"ddkd_total: {name} must be in {rng}; got {v!r}")


def ddkd_total(task_loss, kd_loss, spat, freq, *, kd_ratio, alpha_spatial, alpha_frequency):
  """total = (1 − λ)·task + λ·kd + α1·spat + α2·freq (research §3.3), plus its terms.

  Args:
    task_loss, kd_loss, spat, freq: scalars; kd_loss / spat / freq may be None (term off, 0).
    kd_ratio: λ in [0, 1]. alpha_spatial, alpha_frequency: α1, α2 >= 0.
  Returns:
    (total, {"task", "kd", "spatial", "frequency", "total"}): the terms unweighted, so metrics
    show what each loss does independent of its weight. The caller divides by the number of
    subnets sampled in the step (official).
  """
  _check_weight("kd_ratio", kd_ratio, 1.0)
  _check_weight("alpha_spatial", alpha_spatial)
  _check_weight("alpha_frequency", alpha_frequency)
  zero = jnp.zeros((), jnp.float32)
  kd = zero if kd_loss is None else kd_loss
  sp = zero if spat is None else spat
  fr = zero if freq is None else freq
  if kd_loss is None and isinstance(kd_ratio, numbers.Real) and kd_ratio > 0:
    raise ValueError(f"ddkd_total: kd_ratio={kd_ratio} > 0 but kd_loss is None (no teacher outputs)")
  total = (1.0 - kd_ratio) * task_loss + kd_ratio * kd + alpha_spatial * sp + alpha_frequency * fr
  return total, {"task": task_loss, "kd": kd, "spatial": sp, "frequency": fr, "total": total}
