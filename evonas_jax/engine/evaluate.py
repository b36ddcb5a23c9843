"""`EngineEvaluator`: a subnet's validation metrics at its own cost (the compiled engine).

The masked-mode evaluation (`supernet_train.evaluate_task`) runs the full supernet for every
subnet; this runs the backbone pieces of `engine.backbone` at the subnet's widths, then the
head, with the same per-subnet BatchNorm recalibration (`evonas_jax.evaluate.bn`) and the same
task metrics.
"""
from __future__ import annotations

import functools

import jax

from evonas_jax.engine.backbone import CompiledBackbone
from evonas_jax.engine.tail import is_dense, join_student, make_tail_apply, split_student
from evonas_jax.space import Arch, SearchSpace


class EngineEvaluator:
  """evaluate(variables, batches, arch, calib_batches) -> task metrics dict.

  student: the masked-mode student module (EvoNet or DenseEvoNet); variables: its supernet
  variables {"params", "batch_stats"}; batches: dicts with "image" (B, H, W, Cin), the task's
  targets and "mask" (B,); calib_batches: images (B, H, W, Cin) for BatchNorm recalibration.
  """

  def __init__(self, student, space: SearchSpace, task, scan_backend: str = "auto",
               backbone: CompiledBackbone | None = None):
    self.space, self.task = space, task
    self.dense = is_dense(student)
    self.backbone = backbone or CompiledBackbone(space, 0.0, scan_backend)
    tail = make_tail_apply(student)

    @functools.partial(jax.jit, static_argnums=(3, 4))
    def tail_eval(params, bs, feats, image_hw, bn_train):
      return tail(params, bs, feats, image_hw, bn_train)
    self._tail = tail_eval

    @jax.jit
    def stats(out, batch):
      return task.eval_stats(out, batch)
    self._stats = stats

  def _run(self, variables, images, arch: Arch, bn_train: bool):
    p_bb, p_tail = split_student(variables["params"], self.dense)
    bs_bb, bs_tail = split_student(variables.get("batch_stats", {}), self.dense)
    feats, new_bb, _ = self.backbone.forward(p_bb, bs_bb, images, arch, train=False,
                                             bn_train=bn_train)
    out, _, new_tail = self._tail(p_tail, bs_tail, feats, tuple(images.shape[1:3]), bn_train)
    return out, {"params": variables["params"],
                 "batch_stats": join_student(new_bb, new_tail, self.dense)}

  def predict(self, variables, images, arch: Arch):
    """Eval-mode prediction of `arch`: logits (B, K) or the dense head's dict."""
    return self._run(variables, images, arch, bn_train=False)[0]

  def recalibrate_bn(self, variables, batches, arch: Arch):
    """Variables with the exact BatchNorm statistics of `arch` over the calibration `batches`
    (`evonas_jax.evaluate.bn`; train-mode BN, no stochastic depth)."""
    from evonas_jax.evaluate import recalibrated
    return recalibrated(
        lambda bs, images: self._run({**variables, "batch_stats": bs}, images, arch,
                                     bn_train=True)[1]["batch_stats"],
        variables, batches)

  def evaluate(self, variables, batches, arch: Arch, calib_batches=()) -> dict:
    """The task's metrics (`task.finalize`, plus "error") of `arch` over `batches`."""
    from evonas_jax.tasks import sum_stats
    if len(calib_batches):
      variables = self.recalibrate_bn(variables, calib_batches, arch)
    total = None
    for batch in batches:
      b = {k: v for k, v in batch.items() if k != "index"}
      # The plain prediction, or the depth task's flip TTA (`tasks.Depth.eval_output`).
      out = self.task.eval_output(lambda x: self.predict(variables, x, arch), b["image"])
      total = sum_stats(total, self._stats(out, b))
    return self.task.finalize(jax.device_get(total))
