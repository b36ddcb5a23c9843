"""ViT teacher for CA-DDKD (research/evonas.md §3.4, scaled down to what trains on our data).

The official teachers are frozen ViT-L models; here the teacher is a plain pre-LN ViT trained on
the same data (or loaded from a checkpoint) that also returns one intermediate token map, the
feature the student's projectors are distilled towards.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from evonas_jax.nn.layers import Dense, dense_init

POOLS = ("cls", "mean")
STEMS = ("patch", "conv")


class _MHSA(nn.Module):
  """tokens (B, L, D) -> (B, L, D); qkv with bias, scale head_dim**-0.5."""
  heads: int

  @nn.compact
  def __call__(self, x):
    b, l, d = x.shape
    hd = d // self.heads
    qkv = Dense(3 * d, name="qkv")(x).reshape(b, l, 3, self.heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    attn = jax.nn.softmax(jnp.einsum("blhd,bmhd->bhlm", q, k) * hd ** -0.5, axis=-1)
    return Dense(d, name="proj")(jnp.einsum("bhlm,bmhd->blhd", attn, v).reshape(b, l, d))


class _Block(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) (GELU)."""
  heads: int
  mlp_ratio: float
  dropout: float

  @nn.compact
  def __call__(self, x, train: bool):
    d = x.shape[-1]
    x = x + _MHSA(self.heads, name="attn")(nn.LayerNorm(epsilon=1e-6, name="norm1")(x))
    h = Dense(int(round(self.mlp_ratio * d)), name="fc1")(nn.LayerNorm(epsilon=1e-6, name="norm2")(x))
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(h, approximate=False))
    h = Dense(d, name="fc2")(h)
    return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class _ConvStem(nn.Module):
  """images (B, H, W, C) -> (B, H/p, W/p, dim): the convolutional stem of "Early Convolutions Help
  Transformers See Better" (Xiao et al. 2021) in place of the p x p patchify conv, which makes a
  small ViT train much faster from scratch. A 3x3 conv (+LN+GELU) per stride-2 reduction while
  the remaining factor is even, then one conv with the remaining stride (kernel = stride, e.g. 7
  for p=28/4), then a 1x1 projection to dim. LayerNorm rather than BN keeps the teacher free of
  batch statistics."""
  dim: int
  patch_size: int

  @nn.compact
  def __call__(self, x):
    p, width, i = self.patch_size, max(self.dim // 4, 16), 0
    while p % 2 == 0:
      x = nn.Conv(width, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False,
                  name=f"conv{i}")(x)
      x = nn.gelu(nn.LayerNorm(epsilon=1e-6, name=f"norm{i}")(x), approximate=False)
      p, width, i = p // 2, min(2 * width, self.dim), i + 1
    if p > 1:
      x = nn.Conv(width, (p, p), strides=(p, p), padding="VALID", use_bias=False, name=f"conv{i}")(x)
      x = nn.gelu(nn.LayerNorm(epsilon=1e-6, name=f"norm{i}")(x), approximate=False)
    return nn.Conv(self.dim, (1, 1), name="proj")(x)


class ViTTeacher(nn.Module):
  """images (B, H, W, C) -> (logits (B, num_classes), feature (B, H/p, W/p, dim)).

  Patch embedding (conv p x p, stride p), a cls token (pool="cls") or none (pool="mean"), learned
  position embedding, `depth` pre-LN blocks, final LayerNorm, linear head on the cls token or on
  the mean of the patch tokens. `feature` is the patch tokens (cls token dropped) at the output of
  block `feature_layer` (Python indexing: -1 = last block), before the final LayerNorm, reshaped
  to the patch grid. H and W must be multiples of patch_size. `dropout` (MLP) is active only with
  train=True and then needs a "dropout" rng.
  """
  num_classes: int
  patch_size: int = 4
  dim: int = 192
  depth: int = 6
  heads: int = 3
  mlp_ratio: float = 4.0
  feature_layer: int = -1
  pool: str = "cls"
  dropout: float = 0.0
  stem: str = "patch"

  @property
  def feature_block(self) -> int:
    """feature_layer as a non-negative block index."""
    return self.feature_layer % self.depth

  def grid(self, image_shape) -> tuple[int, int]:
    """(Ht, Wt) of `feature` for an (H, W, C) image."""
    return image_shape[0] // self.patch_size, image_shape[1] // self.patch_size

  @nn.compact
  def __call__(self, images, train: bool = False):
    _validate(dict(num_classes=self.num_classes, patch_size=self.patch_size, dim=self.dim, depth=self.depth,
                   heads=self.heads, mlp_ratio=self.mlp_ratio, feature_layer=self.feature_layer, pool=self.pool,
                   dropout=self.dropout, stem=self.stem), where="ViTTeacher")
    if images.ndim != 4:
      raise ValueError(f"ViTTeacher: images must be (B, H, W, C); got shape {images.shape}")
    b, h, w, _ = images.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"ViTTeacher: image size {h}x{w} is not a multiple of patch_size={p}")
    ht, wt = h // p, w // p
    if self.stem == "patch":
      x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", kernel_init=dense_init,
                  name="patch_embed")(images)
    else:
      x = _ConvStem(self.dim, p, name="conv_stem")(images)
    x = x.reshape(b, ht * wt, self.dim)
    n_extra = 0
    if self.pool == "cls":
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)).astype(x.dtype), x], axis=1)
      n_extra = 1
    x = x + self.param("pos_embed", dense_init, (1, x.shape[1], self.dim))
    feature = None
    for i in range(self.depth):
      x = _Block(self.heads, self.mlp_ratio, self.dropout, name=f"block{i}")(x, train)
      if i == self.feature_block:
        feature = x[:, n_extra:].reshape(b, ht, wt, self.dim)
    x = nn.LayerNorm(epsilon=1e-6, name="norm")(x)
    pooled = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
    logits = Dense(self.num_classes, name="head")(pooled)
    return logits, feature


TEACHER_FIELDS = ("patch_size", "dim", "depth", "heads", "mlp_ratio", "feature_layer", "pool", "dropout",
                  "stem")


def get_config_defaults() -> ml_collections.ConfigDict:
  """Default `teacher` config (a ViT-Tiny-like model: 192-d, 6 blocks, 3 heads, patch 4)."""
  c = ml_collections.ConfigDict()
  c.patch_size = 4
  c.dim = 192
  c.depth = 6
  c.heads = 3
  c.mlp_ratio = 4.0
  c.feature_layer = -1
  c.pool = "cls"
  c.dropout = 0.0
  c.stem = "patch"     # "patch" (p x p patchify conv, ViT) | "conv" (ViT-C convolutional stem)
  return c


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _validate(f: Mapping, where: str = "teacher") -> None:
  def bad(field, allowed):
    raise ValueError(f"{where}.{field}={f[field]!r} is invalid; allowed: {allowed}")

  for field in ("num_classes", "patch_size", "dim", "depth", "heads"):
    if field in f and (not _is_int(f[field]) or f[field] < 1):
      bad(field, "a positive int")
  if not isinstance(f["mlp_ratio"], numbers.Real) or isinstance(f["mlp_ratio"], bool) or f["mlp_ratio"] <= 0:
    bad("mlp_ratio", "a float > 0")
  if f["dim"] % f["heads"]:
    raise ValueError(f"{where}.heads={f['heads']} must divide {where}.dim={f['dim']}")
  d = f["depth"]
  if not _is_int(f["feature_layer"]) or not -d <= f["feature_layer"] < d:
    bad("feature_layer", f"an int in [{-d}, {d - 1}] (depth={d}; negative counts from the last block)")
  if f["pool"] not in POOLS:
    bad("pool", POOLS)
  if f.get("stem", "patch") not in STEMS:
    bad("stem", STEMS)
  if not isinstance(f["dropout"], numbers.Real) or not 0.0 <= f["dropout"] < 1.0:
    bad("dropout", "a float in [0, 1)")


def teacher_from_config(cfg: Mapping | ml_collections.ConfigDict, num_classes: int) -> ViTTeacher:
  """Builds a ViTTeacher from a `teacher` config; missing fields take `get_config_defaults()`.

  Raises ValueError naming the field for a bad value or an unknown field."""
  given = dict(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg)
  unknown = sorted(set(given) - set(TEACHER_FIELDS))
  if unknown:
    raise ValueError(f"teacher config has unknown field(s) {unknown}; allowed: {list(TEACHER_FIELDS)}")
  f = get_config_defaults().to_dict()
  f.update(given)
  f["num_classes"] = num_classes
  _validate(f)
  return ViTTeacher(**f)


class DenseViTTeacher(nn.Module):
  """images (B, H, W, C) -> (out, feature): a ViT teacher for dense prediction.

  The ViT (`ViTTeacher` fields) gives the patch-token map `feature` (B, H/p, W/p, dim) of block
  `feature_layer` (the map CA-DDKD distils towards, research §3.2); a linear per-token head
  (LayerNorm, Dense to p*p*c) unpatchifies it to full resolution (the "linear decoder" of
  SETR/Segmenter-style ViTs: the teacher stays a plain ViT).
  out: task "depth": {"depth": (B, H, W)} = sigmoid * max_depth (as the student's head);
       task "segmentation": {"logits": (B, H, W, num_classes)}.
  """
  task: str
  num_classes: int = 0
  max_depth: float = 10.0
  patch_size: int = 4
  dim: int = 192
  depth: int = 6
  heads: int = 3
  mlp_ratio: float = 4.0
  feature_layer: int = -1
  dropout: float = 0.0
  stem: str = "patch"

  @nn.compact
  def __call__(self, images, train: bool = False):
    if self.task not in DENSE_TASKS:
      raise ValueError(f"DenseViTTeacher.task={self.task!r} is invalid; allowed: {DENSE_TASKS}")
    if self.task == "segmentation" and self.num_classes < 1:
      raise ValueError("DenseViTTeacher: segmentation needs num_classes >= 1")
    vit = ViTTeacher(num_classes=1, patch_size=self.patch_size, dim=self.dim, depth=self.depth,
                     heads=self.heads, mlp_ratio=self.mlp_ratio, feature_layer=self.feature_layer,
                     pool="mean", dropout=self.dropout, stem=self.stem, name="vit")
    _, feature = vit(images, train)
    b, ht, wt, _ = feature.shape
    p = self.patch_size
    c = 1 if self.task == "depth" else self.num_classes
    y = Dense(p * p * c, name="dense_head")(nn.LayerNorm(epsilon=1e-6, name="head_norm")(feature))
    y = y.reshape(b, ht, wt, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, ht * p, wt * p, c)
    if self.task == "depth":
      out = {"depth": jax.nn.sigmoid(y[..., 0].astype(jnp.float32)) * self.max_depth}
    else:
      out = {"logits": y}
    return out, feature


DENSE_TASKS = ("depth", "segmentation")


def dense_teacher_from_config(cfg, task: str, num_classes: int, max_depth: float) -> DenseViTTeacher:
  """A DenseViTTeacher from a `teacher.model` config (same fields as `teacher_from_config`; `pool`
  is ignored: the dense head reads every token). Errors name the field and the allowed values."""
  m = teacher_from_config(cfg, max(num_classes, 1))
  return DenseViTTeacher(task=task, num_classes=num_classes, max_depth=float(max_depth),
                         patch_size=m.patch_size, dim=m.dim, depth=m.depth, heads=m.heads,
                         mlp_ratio=m.mlp_ratio, feature_layer=m.feature_layer, dropout=m.dropout,
                         stem=m.stem)
