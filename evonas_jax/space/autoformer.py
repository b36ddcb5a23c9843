"""AutoFormer (Chen et al., ICCV 2021) ViT search spaces T / S / B (research/zc_proxies.md §4.1).

Per network: embed dim (shared by all blocks) and depth; per block: MLP ratio and #heads (Q-K-V
width 64 x heads, the `--change_qkv` convention). Genome (ints, choice indices):
  [embed, depth, mlp_0 .. mlp_{Dmax-1}, heads_0 .. heads_{Dmax-1}]
Genes of blocks beyond the depth are inert. `genome_to_masks` is pure jnp (vmappable):
  {"embed": (E_max,), "depth": (D_max,), "mlp": (D_max, H_max), "heads": (D_max, heads_max)}
with H_max = max ratio x E_max. `cost` gives params / MACs of the standalone subnet (patch 16,
224x224, 1000 classes by default), computed from the masks; `arch_cost` computes the same from the
decoded arch with Python integers (an independent path, used by the tests).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from evonas_jax.space.genome import as_genome_array

SPACES = {
    "T": {"embed": (192, 216, 240), "depth": (12, 13, 14), "mlp": (3.5, 4.0), "heads": (3, 4)},
    "S": {"embed": (320, 384, 448), "depth": (12, 13, 14), "mlp": (3.0, 3.5, 4.0),
          "heads": (5, 6, 7)},
    "B": {"embed": (528, 576, 624), "depth": (14, 15, 16), "mlp": (3.0, 3.5, 4.0),
          "heads": (9, 10)},
}
QKV_PER_HEAD = 64


@dataclasses.dataclass(frozen=True)
class AutoFormerArch:
  embed_dim: int
  depth: int
  mlp_ratios: tuple
  num_heads: tuple


@dataclasses.dataclass(frozen=True)
class AutoFormerSpace:
  name: str = "S"
  image_size: int = 224
  patch_size: int = 16
  num_classes: int = 1000
  width_div: int = 1   # >1 divides embed dims and the 64-wide heads (CPU tests); 1 = the paper

  @property
  def qkv_per_head(self) -> int:
    return QKV_PER_HEAD // self.width_div

  def __post_init__(self):
    if self.name not in SPACES:
      raise ValueError(f"autoformer space must be one of {sorted(SPACES)}, got {self.name!r}")

  @property
  def choices(self) -> dict:
    c = dict(SPACES[self.name])
    c["embed"] = tuple(e // self.width_div for e in c["embed"])
    return c

  @property
  def max_depth(self) -> int:
    return max(self.choices["depth"])

  @property
  def max_embed(self) -> int:
    return max(self.choices["embed"])

  @property
  def max_heads(self) -> int:
    return max(self.choices["heads"])

  @property
  def max_hidden(self) -> int:
    return int(max(self.choices["mlp"]) * self.max_embed)

  @property
  def genome_length(self) -> int:
    return 2 + 2 * self.max_depth

  @property
  def gene_names(self) -> tuple:
    d = self.max_depth
    return ("embed", "depth") + tuple(f"mlp_{i}" for i in range(d)) + tuple(
        f"heads_{i}" for i in range(d))

  @property
  def upper_bounds(self) -> np.ndarray:
    """Number of choices per gene (exclusive bound, as evonas SearchSpace.upper_bounds)."""
    c, d = self.choices, self.max_depth
    return np.array([len(c["embed"]), len(c["depth"])] + [len(c["mlp"])] * d +
                    [len(c["heads"])] * d, np.int32)

  def size(self) -> int:
    c = self.choices
    return len(c["embed"]) * sum((len(c["mlp"]) * len(c["heads"])) ** d for d in c["depth"])

  def validate(self, genome) -> np.ndarray:
    # Exact int64 first (NaN / 1.5 / strings / ragged lists refused, no int32 wrap-around).
    g = as_genome_array(genome, what=f"autoformer-{self.name} genome", gene_names=self.gene_names)
    ub = self.upper_bounds
    bad = np.flatnonzero((g < 0) | (g >= ub))
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"autoformer-{self.name} gene {self.gene_names[i]!r}: index {int(g[i])} "
                       f"not in 0..{int(ub[i]) - 1}")
    return g.astype(np.int32)

  def decode(self, genome) -> AutoFormerArch:
    g, c, d = self.validate(genome), self.choices, self.max_depth
    depth = c["depth"][g[1]]
    return AutoFormerArch(c["embed"][g[0]], depth,
                          tuple(c["mlp"][i] for i in g[2:2 + depth]),
                          tuple(c["heads"][i] for i in g[2 + d:2 + d + depth]))

  def encode(self, arch: AutoFormerArch) -> np.ndarray:
    c, d = self.choices, self.max_depth
    def idx(vals, v, what):
      if v not in vals:
        raise ValueError(f"autoformer-{self.name} {what}={v} not in {vals}")
      return vals.index(v)
    g = np.zeros(self.genome_length, np.int32)
    g[0], g[1] = idx(c["embed"], arch.embed_dim, "embed_dim"), idx(c["depth"], arch.depth, "depth")
    for i in range(arch.depth):
      g[2 + i] = idx(c["mlp"], arch.mlp_ratios[i], "mlp_ratio")
      g[2 + d + i] = idx(c["heads"], arch.num_heads[i], "num_heads")
    return g

  def sample(self, key, num: int) -> np.ndarray:
    """(num, G) int32 genomes, uniform per gene (AZ-NAS/AutoFormer sampling), seeded by an int."""
    rng = np.random.default_rng(int(key))
    return rng.integers(0, self.upper_bounds, size=(num, self.genome_length)).astype(np.int32)

  def largest(self) -> np.ndarray:
    return self.upper_bounds - 1

  def smallest(self) -> np.ndarray:
    return np.zeros(self.genome_length, np.int32)

  def genome_to_masks(self, genome) -> dict:
    g = jnp.asarray(genome)
    c, d = self.choices, self.max_depth
    embed = jnp.asarray(c["embed"])[g[..., 0]]
    depth = jnp.asarray(c["depth"])[g[..., 1]]
    ratios = jnp.asarray(c["mlp"], jnp.float32)[g[..., 2:2 + d]]
    heads = jnp.asarray(c["heads"])[g[..., 2 + d:2 + 2 * d]]
    hidden = jnp.round(ratios * embed[..., None]).astype(jnp.int32)
    f = lambda b: b.astype(jnp.float32)  # noqa: E731
    return {"embed": f(jnp.arange(self.max_embed) < embed[..., None]),
            "depth": f(jnp.arange(d) < depth[..., None]),
            "mlp": f(jnp.arange(self.max_hidden) < hidden[..., None]),
            "heads": f(jnp.arange(self.max_heads) < heads[..., None])}

  def cost(self, masks) -> dict:
    """params / MACs (batch 1) of the standalone subnet from masks; pure jnp."""
    e = masks["embed"].sum(-1)
    on = masks["depth"]
    h = masks["mlp"].sum(-1) * on
    q = self.qkv_per_head * masks["heads"].sum(-1) * on
    t = (self.image_size // self.patch_size) ** 2 + 1
    patch_in = 3 * self.patch_size ** 2
    params = patch_in * e + e + t * e + e            # patch conv + bias, pos emb, cls
    blocks = (4 * e + (e * 3 * q + 3 * q) + (q * e + e) + (e * h + h) + (h * e + e))
    blocks = blocks * on                              # 2 LNs, qkv, proj, fc1, fc2
    params = params + blocks.sum(-1) + 2 * e + e * self.num_classes + self.num_classes
    macs = (t - 1) * patch_in * e + (t * (e * 3 * q + q * e + e * h + h * e) + 2 * t * t * q).sum(-1)
    macs = macs + e * self.num_classes
    return {"params": params, "macs": macs}

  def arch_cost(self, arch: AutoFormerArch) -> dict:
    """Python-int reference of `cost` for a decoded arch."""
    e, t = arch.embed_dim, (self.image_size // self.patch_size) ** 2 + 1
    patch_in = 3 * self.patch_size ** 2
    params = patch_in * e + e + t * e + e + 2 * e + e * self.num_classes + self.num_classes
    macs = (t - 1) * patch_in * e + e * self.num_classes
    for r, nh in zip(arch.mlp_ratios, arch.num_heads):
      h, q = int(round(r * e)), self.qkv_per_head * nh
      params += 4 * e + e * 3 * q + 3 * q + q * e + e + e * h + h + h * e + e
      macs += t * (3 * e * q + q * e + 2 * e * h) + 2 * t * t * q
    return {"params": params, "macs": macs}


def get_autoformer_space(name: str = "S", **kw) -> AutoFormerSpace:
  return AutoFormerSpace(name, **kw)
