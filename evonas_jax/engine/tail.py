"""What follows the backbone: the classifier (norm + head) or the dense head (outnorms + decoder).

The compiled engine runs the backbone piece by piece (`engine.backbone`) and everything after it
as one compiled "tail" program. These helpers split a student's variables into the two parts
and apply the tail to the four raw stage outputs, with the same parameter names as the masked
modules, so the state, checkpoints and `init_from` are the same whatever the engine.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.nn.layers import Dense, LayerNorm

BACKBONE_PREFIXES = ("stem", "downsample", "stage")


class ClassifierTail(nn.Module):
  """Last stage output (B, H, W, C) -> logits (B, num_classes): LayerNorm, mean pool, Dense.
  Params {"norm", "head"}: EvoNet's own names."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return Dense(self.num_classes, name="head")(LayerNorm(name="norm")(x).mean(axis=(1, 2)))


def is_dense(student) -> bool:
  from evonas_jax.nn.dense import DenseEvoNet
  return isinstance(student, DenseEvoNet)


def split_student(tree: dict, dense: bool) -> tuple[dict, dict]:
  """Student params or batch_stats -> (backbone tree, tail tree).

  Classification (EvoNet): backbone = stem/downsample*/stage* entries, tail = norm/head.
  Dense (DenseEvoNet): backbone = tree["backbone"], tail = the rest (outnorm*, decoder).
  """
  if dense:
    return tree.get("backbone", {}), {k: v for k, v in tree.items() if k != "backbone"}
  bb = {k: v for k, v in tree.items() if k.startswith(BACKBONE_PREFIXES)}
  return bb, {k: v for k, v in tree.items() if not k.startswith(BACKBONE_PREFIXES)}


def join_student(backbone: dict, tail: dict, dense: bool) -> dict:
  """Inverse of `split_student`."""
  if dense:
    return {**tail, "backbone": backbone}
  return {**backbone, **tail}


def _dense_tail(module, feats, image_hw, train):
  normed = [getattr(module, f"outnorm{s}")(f) for s, f in enumerate(feats)]
  return module.decode(normed, image_hw, train), normed


def make_tail_apply(student, num_classes: int | None = None):
  """tail(params, batch_stats, feats, image_hw, train, rng=None) -> (out, student_feats,
  new_batch_stats).

  feats: the four raw backbone stage outputs [(B, H_s, W_s, dims[s])]. out: logits (B, K) or the
  dense head's dict; student_feats: what `return_features` gives (raw maps for EvoNet, the
  outnormed maps for DenseEvoNet) -- the features CA-DDKD distils.
  student: the masked-mode module (EvoNet or DenseEvoNet); its bn_axis_name is dropped (the
  engine runs under jit, where BatchNorm statistics are already over the global batch).
  rng: the "dropout" key of a train-mode head (the same key the masked student gets: the head
  sits at the same module path, so it draws the same dropout masks).
  """
  if is_dense(student):
    module = student.clone(bn_axis_name=None)

    def tail(params, batch_stats, feats, image_hw, train, rng=None):
      v = {"params": params, "batch_stats": batch_stats}
      if train:
        rngs = {"dropout": rng if rng is not None else jax.random.key(0)}
        (out, normed), upd = module.apply(v, feats, tuple(image_hw), True, method=_dense_tail,
                                          mutable=["batch_stats"], rngs=rngs)
        return out, normed, upd["batch_stats"]
      out, normed = module.apply(v, feats, tuple(image_hw), False, method=_dense_tail)
      return out, normed, batch_stats
    return tail

  head = ClassifierTail(student.num_classes if num_classes is None else num_classes)

  def tail(params, batch_stats, feats, image_hw, train, rng=None):
    del image_hw, train, rng
    return head.apply({"params": params}, feats[-1]), feats, batch_stats
  return tail


def cast_tree(tree, dtype):
  """Floating leaves cast to `dtype` (None: unchanged)."""
  from evonas_jax.steps import cast_floats
  return tree if dtype is None else cast_floats(tree, dtype)
