"""Tasks: what a network predicts and how it is trained, distilled and scored, by name.

One `Task` object carries everything that differs between classification, monocular depth and
semantic segmentation, so the supernet loss (`supernet_loss`), the trainers and the search
evaluator (`dmmpe`) are written once:

  task_loss(out, batch)          -> (loss, metrics)   supervised term of research §3.3
  kd_loss(out, t_out, T)         -> scalar             output-level KD (KL / SI-log / pixel KL)
  kd_target(out)                 -> array              what a student passes on for in-place KD
  eval_output(apply, images)     -> out                the evaluation prediction: apply(images),
                                                       or for depth with flip_tta the official
                                                       flip test-time augmentation
  eval_stats(out, batch)         -> {name: sum}        jit/vmap-able per-batch sums (padded rows
                                                       masked by batch["mask"])
  finalize(stats)                -> {metric: value, "error": e}   e lower-is-better, the search's
                                                       error objective: 1-acc, AbsRel, 1-mIoU

`out` is the model output: logits (B, K) for classification; {"depth": (B, H, W)} for depth;
{"logits": (B, H, W, K), "aux_logits": (B, H, W, K)} for segmentation. Teachers return the
same structure, so `t_out` is the teacher's `kd_target`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from evonas_jax import distill

TASKS: dict[str, type] = {}


def register_task(name: str):
  def deco(cls):
    TASKS[name] = cls
    cls.name = name
    return cls
  return deco


def get_task(name: str, **kwargs):
  """A task by registry name ("classification" | "depth" | "segmentation")."""
  if name not in TASKS:
    raise ValueError(f"task={name!r} is not one of {tuple(TASKS)}")
  return TASKS[name](**kwargs)


def flip_tta_blend(pred, pred_flipped):
  """Blends a depth prediction with the prediction on the horizontally flipped image.

  The EvoNAS depth search scores candidates with "flip-TTA post-processing" / "flip-TTA with an
  edge-blend mask" (research notes on the official code, its search objectives and its depth
  evaluation; the notes name the step, not its formula). The official depth code uses a
  BTS/NeWCRFs-style evaluation, whose post-processing is the PackNet-SfM edge blend on *depth*
  with a plain mean as the fusion; that is the formula written here (own implementation):

    hat   = pred_flipped flipped back (column j <- column W - 1 - j)
    x_j   = j / (W - 1)                          (linspace(0, 1, W); x = 0 for W = 1)
    m_j   = 1 - clip(20 (x_j - 0.05), 0, 1)      (1 on the left 5 % of columns, 0 beyond 10 %)
    m'_j  = m_{W-1-j}                            (the same ramp at the right border)
    out   = m' * pred + m * hat + (1 - m - m') * (pred + hat) / 2

  Why: a mirrored scene is as plausible as the original, so the mean of the two passes averages
  out part of the prediction error. The border ramp comes from stereo-trained monodepth, whose
  predictions have disocclusion artefacts along the left image border; those columns lie at the
  right border of the mirrored image, where the network has no such artefact, so the left 5 %
  take the flipped-back pass, the right 5 % (symmetrically) the plain pass, ramping to the mean
  over the next 5 %. The supervised depth codes (BTS, NeWCRFs, EvoNAS) kept the blend unchanged;
  it is replicated here so that the fitness is the official one.

  Args:
    pred: f32 (B, H, W) depth predicted on the images.
    pred_flipped: f32 (B, H, W) depth predicted on the horizontally flipped images, as the
      network returned it (not yet flipped back).

  Returns:
    f32 (B, H, W) blended depth.
  """
  pred = pred.astype(jnp.float32)
  hat = jnp.flip(pred_flipped.astype(jnp.float32), axis=-1)
  w = pred.shape[-1]
  x = jnp.linspace(0.0, 1.0, w, dtype=jnp.float32)
  m = 1.0 - jnp.clip(20.0 * (x - 0.05), 0.0, 1.0)      # (W,), broadcast over (B, H)
  m_hat = jnp.flip(m, axis=0)
  return m_hat * pred + m * hat + (1.0 - m - m_hat) * 0.5 * (pred + hat)


def cross_entropy(logits, labels, valid=None):
  """Mean softmax CE over valid positions; logits (..., K) float, labels (...) int, valid (...)
  bool or None (all)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # Ignored positions (e.g. label 255 >= K) gather class 0 instead: an out-of-range gather
  # fills NaN, and NaN * 0 would poison the masked mean.
  safe = labels if valid is None else jnp.where(valid, labels, 0)
  nll = -jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]
  if valid is None:
    return jnp.mean(nll)
  valid = valid.astype(jnp.float32)
  return jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)


@register_task("classification")
@dataclasses.dataclass(frozen=True)
class Classification:
  """Image classification: CE, KL KD on logits, top-1 accuracy."""
  num_classes: int = 10

  def target_shape(self) -> tuple:
    return (self.num_classes,)

  def task_loss(self, out, batch):
    logits = out.astype(jnp.float32)
    ce = cross_entropy(logits, batch["label"])
    return ce, {"ce": ce, "train_acc": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def kd_loss(self, out, t_out, temperature: float = 1.0):
    return distill.kd_kl(out, t_out, temperature)

  def kd_target(self, out):
    return out.astype(jnp.float32)

  def eval_output(self, apply, images):
    """The evaluation prediction: apply(images) (no test-time augmentation)."""
    return apply(images)

  def eval_stats(self, out, batch):
    m = batch["mask"].astype(jnp.float32)
    return {"correct": jnp.sum((jnp.argmax(out, -1) == batch["label"]) * m), "count": jnp.sum(m)}

  def finalize(self, stats):
    acc = float(stats["correct"]) / max(float(stats["count"]), 1.0)
    return {"accuracy": acc, "error": 1.0 - acc}


@register_task("depth")
@dataclasses.dataclass(frozen=True)
class Depth:
  """Monocular depth: SI-log task loss on valid ground truth, SI-log KD against the teacher's
  depth (valid where teacher > 1e-3, research §3.3), per-image depth metrics (the standard
  evaluation averages metrics over images). error = AbsRel.

  flip_tta: evaluate with the official flip test-time augmentation (`eval_output`,
  `flip_tta_blend`): two forward passes per batch. Off by default here (training evaluation
  keeps its cost); the depth search turns it on (`config.evaluator.depth_flip_tta`).
  eval_crop: crop fractions applied to the evaluated map itself (None | "eigen" | "garg"). The
  Garg crop is defined on the full-resolution KITTI frame: the dense eval pipeline applies it
  there (`data.eval_crop="garg"`, before the KB crop) and the runtime then leaves this None;
  "garg" here is right only for maps that *are* full frames.
  """
  min_depth: float = 1e-3
  max_depth: float = 10.0
  variance_focus: float = 0.85
  eval_crop: str | None = None      # metric crop: None | "eigen" (NYU) | "garg" (full frames)
  flip_tta: bool = False

  def target_shape(self, image_shape) -> tuple:
    return tuple(image_shape[:2])

  def _valid(self, gt):
    return (gt > self.min_depth) & (gt < self.max_depth)

  def task_loss(self, out, batch):
    pred, gt = out["depth"].astype(jnp.float32), batch["depth"].astype(jnp.float32)
    loss = distill.silog_loss(pred, gt, self._valid(gt), self.variance_focus)
    return loss, {"silog": loss}

  def kd_loss(self, out, t_out, temperature: float = 1.0):
    del temperature
    return distill.silog_loss(out["depth"], t_out, None, self.variance_focus)

  def kd_target(self, out):
    return out["depth"].astype(jnp.float32)

  def eval_output(self, apply, images):
    """The evaluation prediction of `apply` (images (B, H, W, C) -> {"depth": (B, H, W), ...}).

    With flip_tta: {"depth": flip_tta_blend(apply(images), apply(flip(images)))}, the flip
    along W (axis 2 of NHWC). jit/vmap-able when `apply` is."""
    out = apply(images)
    if not self.flip_tta:
      return out
    flipped = apply(jnp.flip(images, axis=2))
    return {**out, "depth": flip_tta_blend(out["depth"], flipped["depth"])}

  def eval_stats(self, out, batch):
    """Per-image AbsRel, SqRel, RMSE, RMSE-log, log10, δ1..3 over valid pixels (inside the
    eval crop; prediction clipped to [min_depth, max_depth]), summed over the real images that
    have a valid pixel (`evonas_jax.metrics.DepthMetrics` semantics, in jnp for vmap/jit)."""
    gt = batch["depth"].astype(jnp.float32)
    pred = jnp.clip(out["depth"].astype(jnp.float32), self.min_depth, self.max_depth)
    valid = self._valid(gt).astype(jnp.float32)
    if self.eval_crop not in (None, "none"):
      from evonas_jax.metrics import crop_mask
      valid = valid * jnp.asarray(crop_mask(tuple(gt.shape[1:3]), self.eval_crop), jnp.float32)
    n = jnp.sum(valid, axis=(1, 2))
    has = (n > 0).astype(jnp.float32) * batch["mask"].astype(jnp.float32)
    n = jnp.maximum(n, 1.0)
    g = jnp.where(valid > 0, gt, 1.0)
    p = jnp.where(valid > 0, pred, 1.0)

    def per_image(x):
      return jnp.sum(x * valid, axis=(1, 2)) / n
    ratio = jnp.maximum(p / g, g / p)
    per = {"abs_rel": per_image(jnp.abs(p - g) / g),
           "sq_rel": per_image((p - g) ** 2 / g),
           "rmse": jnp.sqrt(per_image((p - g) ** 2)),
           "rmse_log": jnp.sqrt(per_image((jnp.log(p) - jnp.log(g)) ** 2)),
           "log10": per_image(jnp.abs(jnp.log10(p) - jnp.log10(g))),
           "d1": per_image((ratio < 1.25).astype(jnp.float32)),
           "d2": per_image((ratio < 1.25 ** 2).astype(jnp.float32)),
           "d3": per_image((ratio < 1.25 ** 3).astype(jnp.float32))}
    stats = {k: jnp.sum(v * has) for k, v in per.items()}
    stats["count"] = jnp.sum(has)
    return stats

  def finalize(self, stats):
    c = max(float(stats["count"]), 1.0)
    out = {k: float(v) / c for k, v in stats.items() if k != "count"}
    out["error"] = out["abs_rel"]
    return out


@register_task("segmentation")
@dataclasses.dataclass(frozen=True)
class Segmentation:
  """Semantic segmentation: pixel CE (ignore label honoured) + aux_weight x CE of the auxiliary
  FCN head (0.4, the UPerNet recipe), pixel KL KD against the teacher's softmax, confusion-matrix
  mIoU (classes absent from both ground truth and prediction excluded). error = 1 - mIoU."""
  num_classes: int = 41
  ignore_label: int = 255
  aux_weight: float = 0.4

  def target_shape(self, image_shape) -> tuple:
    return (*image_shape[:2], self.num_classes)

  def task_loss(self, out, batch):
    lab = batch["label"]
    valid = lab != self.ignore_label
    ce = cross_entropy(out["logits"], lab, valid)
    loss = ce
    metrics = {"ce": ce}
    if self.aux_weight > 0 and "aux_logits" in out:
      aux = cross_entropy(out["aux_logits"], lab, valid)
      loss = ce + self.aux_weight * aux
      metrics["aux_ce"] = aux
    pix = jnp.sum((jnp.argmax(out["logits"], -1) == lab) * valid) / jnp.maximum(jnp.sum(valid), 1)
    metrics["train_pixel_acc"] = pix
    return loss, metrics

  def kd_loss(self, out, t_out, temperature: float = 1.0):
    # t_out: teacher logits; the official KD takes the teacher's class probabilities.
    return distill.pixel_kl(out["logits"], jax.nn.softmax(t_out.astype(jnp.float32), -1),
                            None, temperature)

  def kd_target(self, out):
    return out["logits"].astype(jnp.float32)

  def eval_output(self, apply, images):
    """The evaluation prediction: apply(images) (no test-time augmentation)."""
    return apply(images)

  def eval_stats(self, out, batch):
    k = self.num_classes
    lab = batch["label"]
    valid = (lab != self.ignore_label) & (lab >= 0) & (lab < k)
    valid = valid & (batch["mask"][:, None, None] > 0)
    pred = jnp.argmax(out["logits"], -1)
    idx = jnp.where(valid, lab * k + pred, 0).reshape(-1)
    conf = jnp.zeros((k * k,), jnp.float32).at[idx].add(valid.reshape(-1).astype(jnp.float32))
    return {"confusion": conf.reshape(k, k)}

  def finalize(self, stats):
    import numpy as np
    conf = np.asarray(stats["confusion"], np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1.0), np.nan)
    miou = float(np.nanmean(iou)) if present.any() else 0.0
    pix = float(tp.sum() / max(conf.sum(), 1.0))
    return {"miou": miou, "pixel_acc": pix, "error": 1.0 - miou}


def sum_stats(a, b):
  """Adds two eval_stats pytrees (None = empty)."""
  return b if a is None else jax.tree.map(lambda x, y: x + y, a, b)
