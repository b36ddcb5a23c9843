"""Masked AutoFormer ViT (linen): one compile for every arch of an AutoFormer space.

Pre-LN ViT at the space's max widths: patch conv -> [cls] + tokens + learned absolute position
embedding (AutoFormer's relative position encoding is left out) -> scanned blocks -> LN -> head on
the cls token. Exact masking: tokens are zero outside the active embed dims and LayerNorm takes its
statistics over the active dims only; heads beyond the arch's count and MLP units beyond its ratio
are zeroed; a block beyond the depth is skipped (residual only). Masks come from
`AutoFormerSpace.genome_to_masks` (evonas_jax.space.autoformer).

Proxy hooks as in nn/nb201.py: `capture=True` also returns [(GELU input (B, T, H), unit mask)] per
block; qkv/proj/fc1/fc2/head outputs are perturbed ("probe") and sown ("probe_out").
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evonas_jax.space.autoformer import AutoFormerSpace


def masked_layernorm(x, em, scale, bias, eps=1e-6):
  """LayerNorm over the active feature dims (em: (E,) 0/1); inactive dims stay 0."""
  n = jnp.maximum(em.sum(), 1.0)
  mu = (x * em).sum(-1, keepdims=True) / n
  var = (((x - mu) * em) ** 2).sum(-1, keepdims=True) / n
  return ((x - mu) * jax.lax.rsqrt(var + eps) * scale + bias) * em


class MLN(nn.Module):
  @nn.compact
  def __call__(self, x, em):
    e = x.shape[-1]
    return masked_layernorm(x, em, self.param("scale", nn.initializers.ones, (e,)),
                            self.param("bias", nn.initializers.zeros, (e,)))


def _dense(features, name):
  return nn.Dense(features, kernel_init=nn.initializers.truncated_normal(0.02), name=name)


class AFBlock(nn.Module):
  heads: int
  head_dim: int
  hidden: int

  @nn.compact
  def __call__(self, x, m, em):
    b, t, e = x.shape
    on = m["depth"]
    y = MLN(name="ln1")(x, em)
    qkv = _dense(3 * self.heads * self.head_dim, "qkv")(y)
    qkv = self.perturb("probe_qkv", qkv)
    self.sow("outs", "probe_qkv_out", qkv)
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.heads, self.head_dim), 3, axis=2)
    att = jnp.einsum("bqhd,bkhd->bhqk", q[:, :, 0], k[:, :, 0]) / jnp.sqrt(self.head_dim)
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(att, -1), v[:, :, 0])
    o = (o * m["heads"][:, None]).reshape(b, t, -1)
    o = _dense(e, "proj")(o)
    o = self.perturb("probe_proj", o)
    self.sow("outs", "probe_proj_out", o)
    x = x + on * o * em
    y = MLN(name="ln2")(x, em)
    z = _dense(self.hidden, "fc1")(y)
    z = self.perturb("probe_fc1", z)
    self.sow("outs", "probe_fc1_out", z)
    act = (z, m["mlp"] * on)
    h = jax.nn.gelu(z, approximate=False) * m["mlp"]
    o = _dense(e, "fc2")(h)
    o = self.perturb("probe_fc2", o)
    self.sow("outs", "probe_fc2_out", o)
    return x + on * o * em, act


class AutoFormerViT(nn.Module):
  """(B, H, W, 3) images, masks (space.genome_to_masks) -> logits (B, classes) [, acts]."""
  space: AutoFormerSpace

  @nn.compact
  def __call__(self, x, masks, bn: bool = True, capture: bool = False):
    sp = self.space
    em = masks["embed"]
    p = sp.patch_size
    x = nn.Conv(sp.max_embed, (p, p), (p, p), kernel_init=nn.initializers.truncated_normal(0.02),
                name="patch")(x)
    x = self.perturb("probe_patch", x)
    self.sow("outs", "probe_patch_out", x)
    b = x.shape[0]
    x = x.reshape(b, -1, sp.max_embed)
    cls = self.param("cls", nn.initializers.truncated_normal(0.02), (1, 1, sp.max_embed))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, sp.max_embed)), x], axis=1)
    pos = self.param("pos", nn.initializers.truncated_normal(0.02), (1,) + x.shape[1:])
    x = (x + pos) * em
    blocks = nn.scan(AFBlock, variable_axes={"params": 0, "perturbations": 0, "outs": 0},
                     split_rngs={"params": True}, in_axes=(0, nn.broadcast),
                     length=sp.max_depth)
    bm = {"depth": masks["depth"], "mlp": masks["mlp"], "heads": masks["heads"]}
    x, acts = blocks(sp.max_heads, sp.qkv_per_head, sp.max_hidden, name="blocks")(x, bm, em)
    x = MLN(name="norm")(x[:, 0], em)
    x = nn.Dense(sp.num_classes, name="head")(x)
    x = self.perturb("probe_head", x)
    self.sow("outs", "probe_head_out", x)
    if not capture:
      return x
    z, w = acts
    return x, [(z[i], w[i]) for i in range(sp.max_depth)]


def weight_paths(space: AutoFormerSpace) -> tuple:
  paths = [("patch", "kernel")]
  for i in range(space.max_depth):
    paths += [("blocks", n, "kernel", i) for n in ("qkv", "proj", "fc1", "fc2")]
  return tuple(paths + [("head", "kernel")])


def init_autoformer(space: AutoFormerSpace, rng, batch: int = 2):
  model = AutoFormerViT(space)
  x = jnp.zeros((batch, space.image_size, space.image_size, 3), jnp.float32)
  v = model.init(rng, x, space.genome_to_masks(space.largest()))
  return model, {"params": v["params"]}


def autoformer_proxy_model(space: AutoFormerSpace):
  from evonas_jax.proxies.model import linen_proxy_model
  return linen_proxy_model(AutoFormerViT(space), weight_paths(space), space.cost,
                           name=f"autoformer-{space.name}")
