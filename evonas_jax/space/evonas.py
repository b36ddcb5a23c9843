"""The EvoNAS search spaces: the official 28-gene space and the hybrid block-type space.

Official genome (research/evonas.md §1.2), 28 integers, in the order of the official
`MambaSearchSpace.encode/decode` so genomes interoperate with the PyTorch code:

  [mlp1, ds1, ex1, mlp2, ds2, ex2, mlp3, ds3, ex3, mlp4]   choice *indices*
  + 2 + 4 + 8 + 4 = 18 depth bits, stage by stage          each stage needs >= 1 active bit

The hybrid space appends one block-type gene per stage (index into BLOCK_TYPES), a search
dimension the official code does not have: 32 genes. A stage-4 SSM mixer (only reachable in the
hybrid space) uses the fixed `stage4_ssm` expand / d_state, since the official genome has no
stage-4 SSM genes. Genes of a stage whose type is attention (d_state, expand) are inert.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from evonas_jax.space.arch import BLOCK_TYPES, Arch
from evonas_jax.space.genome import as_genome_array

MLP_CHOICES = (0.5, 1.0, 2.0, 3.0, 3.5, 4.0)
D_STATE_CHOICES = (16, 32, 48, 64)
EXPAND_CHOICES = (0.5, 1.0, 2.0, 3.0, 4.0)

# Width presets: same genome, same code path, smaller embedding dims.
PRESETS = {
    "base": (64, 128, 256, 512),    # official VSSD-T widths
    "small": (32, 64, 128, 256),
    "tiny": (16, 32, 64, 128),      # fast on CPU; tests and quickstart
}


@dataclasses.dataclass(frozen=True)
class Gene:
  """One position of the genome: its name, stage and allowed values (index i -> values[i])."""
  name: str
  stage: int
  values: tuple


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """A 4-stage VSS/ViT search space. Genomes are int arrays of shape (genome_length,).

  Attributes:
    name: "evonas" or "hybrid".
    preset: width preset name (see PRESETS).
    dims: embedding dim per stage.
    heads: heads per stage (SSD heads for VSSD, attention heads for attention).
    max_depths: supernet blocks per stage.
    default_types: block type per stage when the space has no type genes.
    searchable_types: whether the block type per stage is a gene (hybrid).
    stage4_ssm: (expand, d_state) of stage-4 SSM mixers (hybrid only).
  """
  name: str
  preset: str
  dims: tuple[int, ...]
  heads: tuple[int, ...] = (2, 4, 8, 16)
  max_depths: tuple[int, ...] = (2, 4, 8, 4)
  default_types: tuple[str, ...] = ("vssd", "vssd", "vssd", "attention")
  searchable_types: bool = False
  mlp_choices: tuple[float, ...] = MLP_CHOICES
  d_state_choices: tuple[int, ...] = D_STATE_CHOICES
  expand_choices: tuple[float, ...] = EXPAND_CHOICES
  type_choices: tuple[str, ...] = BLOCK_TYPES
  stage4_ssm: tuple[float, int] = (2.0, 16)

  def __post_init__(self):
    for s, (c, h) in enumerate(zip(self.dims, self.heads)):
      if c % h:
        raise ValueError(f"dims[{s}]={c} is not divisible by heads[{s}]={h}")
      for e in self.expand_choices + (self.stage4_ssm[0],):
        d_inner = int(c * e)
        if d_inner * 1.0 != c * e or d_inner % h:
          raise ValueError(f"expand {e} at dims[{s}]={c} gives d_inner={c * e}, which must be an "
                           f"integer divisible by heads[{s}]={h}")

  # ------------------------------------------------------------------ genes
  @property
  def num_stages(self) -> int:
    return len(self.dims)

  @property
  def genes(self) -> tuple[Gene, ...]:
    g = []
    for s in range(self.num_stages):
      g.append(Gene(f"mlp_ratio[stage {s + 1}]", s, self.mlp_choices))
      if self.default_types[s] != "attention":
        g.append(Gene(f"d_state[stage {s + 1}]", s, self.d_state_choices))
        g.append(Gene(f"expand[stage {s + 1}]", s, self.expand_choices))
    for s, d in enumerate(self.max_depths):
      for i in range(d):
        g.append(Gene(f"depth[stage {s + 1}, block {i}]", s, (0, 1)))
    if self.searchable_types:
      for s in range(self.num_stages):
        g.append(Gene(f"block_type[stage {s + 1}]", s, self.type_choices))
    return tuple(g)

  @property
  def genome_length(self) -> int:
    return len(self.genes)

  @property
  def gene_names(self) -> tuple[str, ...]:
    return tuple(g.name for g in self.genes)

  @property
  def upper_bounds(self) -> np.ndarray:
    """Exclusive upper bound of every gene: gene i takes values in [0, upper_bounds[i])."""
    return np.array([len(g.values) for g in self.genes], np.int32)

  @property
  def ssm_stages(self) -> tuple[int, ...]:
    """Stages that carry d_state / expand genes (the official VSS stages)."""
    return tuple(s for s in range(self.num_stages) if self.default_types[s] != "attention")

  def depth_slice(self, stage: int) -> slice:
    """Where the depth bits of `stage` sit in the genome."""
    start = sum(1 + 2 * (t != "attention") for t in self.default_types)
    start += sum(self.max_depths[:stage])
    return slice(start, start + self.max_depths[stage])

  # ------------------------------------------------------------------ counting
  def size(self) -> int:
    """Number of distinct weight-shared subnets (depth bits count as positions, not counts)."""
    n = 1
    for g in self.genes:
      if not g.name.startswith("depth"):
        n *= len(g.values)
    for d in self.max_depths:
      n *= 2 ** d - 1   # every stage needs >= 1 active block
    return n

  # ------------------------------------------------------------------ validation
  def validate(self, genome) -> np.ndarray:
    """Checks a genome and returns it as int32. Raises ValueError naming the bad gene."""
    # Exact int64 first: shape, strings / None / NaN / 1.5 / ragged lists refused by name, and
    # no int32 wrap-around (2**32 would otherwise become the valid gene 0).
    g = as_genome_array(genome, what=f"{self.name} genome", gene_names=self.gene_names)
    for i, (gene, v) in enumerate(zip(self.genes, g)):
      if not 0 <= v < len(gene.values):
        raise ValueError(f"gene {i} ({gene.name}) = {int(v)} is out of range: allowed indices "
                         f"0..{len(gene.values) - 1} for values {gene.values}")
    for s in range(self.num_stages):
      if not g[self.depth_slice(s)].any():
        sl = self.depth_slice(s)
        raise ValueError(f"depth bits of stage {s + 1} (genes {sl.start}..{sl.stop - 1}) are all 0: "
                         f"each stage needs at least one active block")
    return g.astype(np.int32)

  def validate_arch(self, arch: Arch) -> Arch:
    """Checks that `arch` belongs to this space (round trip through encode)."""
    self.encode(arch)
    return arch

  # ------------------------------------------------------------------ decode / encode
  def decode(self, genome) -> Arch:
    g = self.validate(genome)
    it = iter(range(self.genome_length))
    mlp, ds, ex = [], [], []
    for s in range(self.num_stages):
      mlp.append(self.mlp_choices[g[next(it)]])
      if self.default_types[s] != "attention":
        ds.append(self.d_state_choices[g[next(it)]])
        ex.append(self.expand_choices[g[next(it)]])
      else:
        ex.append(self.stage4_ssm[0])
        ds.append(self.stage4_ssm[1])
    depth = tuple(tuple(int(b) for b in g[self.depth_slice(s)]) for s in range(self.num_stages))
    if self.searchable_types:
      start = self.genome_length - self.num_stages
      types = tuple(self.type_choices[i] for i in g[start:])
    else:
      types = self.default_types
    return Arch(tuple(mlp), tuple(ds), tuple(ex), depth, types)

  def encode(self, arch: Arch) -> np.ndarray:
    def index(values, v, what, s):
      try:
        return values.index(v)
      except ValueError:
        raise ValueError(f"{what} of stage {s + 1} = {v!r} is not allowed: choices {values}") from None

    if arch.num_stages != self.num_stages:
      raise ValueError(f"arch has {arch.num_stages} stages, space {self.name} has {self.num_stages}")
    g = []
    for s in range(self.num_stages):
      g.append(index(self.mlp_choices, arch.mlp_ratio[s], "mlp_ratio", s))
      if self.default_types[s] != "attention":
        g.append(index(self.d_state_choices, arch.d_state[s], "d_state", s))
        g.append(index(self.expand_choices, arch.expand[s], "expand", s))
      elif (arch.expand[s], arch.d_state[s]) != tuple(self.stage4_ssm):
        raise ValueError(f"stage {s + 1} has no expand/d_state genes in space {self.name}: they must "
                         f"be the fixed {self.stage4_ssm}, got {(arch.expand[s], arch.d_state[s])}")
    for s, bits in enumerate(arch.depth):
      if len(bits) != self.max_depths[s]:
        raise ValueError(f"depth of stage {s + 1} has {len(bits)} bits, allowed {self.max_depths[s]}")
      g.extend(bits)
    if self.searchable_types:
      g.extend(index(self.type_choices, t, "block_type", s) for s, t in enumerate(arch.block_type))
    elif arch.block_type != self.default_types:
      raise ValueError(f"space {self.name} has fixed block types {self.default_types}, "
                       f"got {arch.block_type}")
    return self.validate(np.array(g, np.int32))

  # ------------------------------------------------------------------ sampling
  def sample(self, key, num: int | None = None, choices: dict | None = None) -> np.ndarray:
    """Uniform random genomes, as the official supernet sampler draws them.

    Args:
      key: a jax PRNG key (or an int seed).
      num: None for one genome (genome_length,), else (num, genome_length).
      choices: optional {"mlp_ratio": values, "d_state": ..., "expand": ..., "depth": bool,
        "block_type": ...} restricting the opened choices (progressive shrinking). A closed gene
        stays at its maximum; closed depth means every block active.
    Returns:
      int32 genome(s). Empty stages get one random bit set, as in the official code.
    """
    rng = np.random.default_rng(_seed_sequence(key))
    out = np.stack([self._sample_one(rng, choices or {}) for _ in range(num or 1)])
    return out[0] if num is None else out

  def _sample_one(self, rng: np.random.Generator, choices: dict) -> np.ndarray:
    g = []
    for gene in self.genes:
      kind = gene.name.split("[")[0]
      if kind == "depth":
        g.append(int(rng.integers(2)) if choices.get("depth", True) else 1)
        continue
      opened = choices.get(kind)
      allowed = [i for i, v in enumerate(gene.values) if opened is None or v in opened]
      if not allowed:
        raise ValueError(f"choices[{kind!r}] = {opened} opens none of {gene.values}")
      g.append(int(rng.choice(allowed)))
    g = np.array(g, np.int32)
    for s in range(self.num_stages):
      sl = self.depth_slice(s)
      if not g[sl].any():
        g[sl.start + int(rng.integers(self.max_depths[s]))] = 1
    return g

  # ------------------------------------------------------------------ reference archs
  def largest(self, block_type: Sequence[str] | None = None) -> Arch:
    """The maximal subnet (max widths, every block); block types default to the official layout."""
    return self._extreme(max, 1, block_type)

  def smallest(self, block_type: Sequence[str] | None = None) -> Arch:
    """The minimal subnet (min widths, the first block of every stage)."""
    return self._extreme(min, 0, block_type)

  def _extreme(self, pick, fill: int, block_type) -> Arch:
    n = self.num_stages
    types = tuple(block_type) if block_type is not None else self.default_types
    ds = [pick(self.d_state_choices) if s in self.ssm_stages else self.stage4_ssm[1] for s in range(n)]
    ex = [pick(self.expand_choices) if s in self.ssm_stages else self.stage4_ssm[0] for s in range(n)]
    depth = tuple((1,) + (fill,) * (d - 1) for d in self.max_depths)
    return Arch((pick(self.mlp_choices),) * n, tuple(ds), tuple(ex), depth, types)

  # ------------------------------------------------------------------ widths
  def max_widths(self, stage: int) -> dict[str, int]:
    """Supernet (maximum) widths of a stage: mlp hidden, SSM d_inner and d_state."""
    c = self.dims[stage]
    ssm = stage in self.ssm_stages
    return {
        "hidden": int(c * max(self.mlp_choices)),
        "d_inner": int(c * (max(self.expand_choices) if ssm else self.stage4_ssm[0])),
        "d_state": max(self.d_state_choices) if ssm else self.stage4_ssm[1],
    }

  def stage_types(self, stage: int) -> tuple[str, ...]:
    """Mixer types the supernet must hold for `stage`."""
    return self.type_choices if self.searchable_types else (self.default_types[stage],)


def _seed_sequence(key) -> list[int]:
  """Entropy for numpy's generator from an int seed or a jax PRNG key (typed or raw uint32)."""
  if isinstance(key, (int, np.integer)):
    return [int(key)]
  import jax  # local: keep `space` importable without initialising a backend
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return [int(v) for v in np.asarray(key).reshape(-1)]


def get_space(name: str = "evonas", preset: str = "base") -> SearchSpace:
  """Returns a registered search space.

  Args:
    name: "evonas" (official 28 genes) or "hybrid" (+ one block-type gene per stage).
    preset: width preset, one of PRESETS ("base" = official dims 64/128/256/512).
  """
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; allowed: {sorted(PRESETS)}")
  if name == "evonas":
    return SearchSpace("evonas", preset, PRESETS[preset])
  if name == "hybrid":
    return SearchSpace("hybrid", preset, PRESETS[preset], searchable_types=True)
  raise ValueError(f"unknown search space {name!r}; allowed: ['evonas', 'hybrid']")


def official_size() -> float:
  """The official space's size computed from first principles (research §1.2), ~1.78e12."""
  widths = len(MLP_CHOICES) ** 4 * len(D_STATE_CHOICES) ** 3 * len(EXPAND_CHOICES) ** 3
  return widths * math.prod(2 ** d - 1 for d in (2, 4, 8, 4))
