"""NAS-Bench-201 cell search space: 6 edges x 5 ops = 15,625 cells.

Two encodings are supported (shared/benchdata/README.md, checked on the benchdata rows):

* the NB201 string, e.g. `|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|...|`:
  node j (1..3) lists `op~k` for its inputs k < j, nodes separated by `+`;
* the NASLib op-index 6-tuple over edges (1,2),(1,3),(1,4),(2,3),(2,4),(3,4) (node 1 = cell input),
  op codes 0=skip_connect, 1=none, 2=nor_conv_3x3, 3=nor_conv_1x1, 4=avg_pool_3x3.
  String token `op~k` of node j is edge (k+1, j+1).

The NB201 index (0..15624) is *not* a closed-form enumeration (index 0 is not the all-`none`
cell): it is the row order of the NB201/NATS-tss file, so it comes from the benchdata table
(`evonas_jax.proxies.benchdata`).

A genome here is the NASLib 6-tuple (int, (6,)), so `genome_to_masks` is a one-hot (6, 5) array in
NASLib op-code order: masked mode takes it as data, so one compile serves every cell.
"""
from __future__ import annotations

import itertools
import re

import jax.numpy as jnp
import numpy as np

from evonas_jax.space.genome import as_genome_array

# NASLib op codes (index = code).
NASLIB_OPS = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
# NB201's own op order, used for its index enumeration.
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# NASLib edge order, as (from_node, to_node) with node 0 = cell input (0-based).
EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
# Edge order inside the NB201 string: node j=1..3, inputs k<j.
_STR_EDGES = tuple((k, j) for j in range(1, 4) for k in range(j))
NUM_EDGES, NUM_OPS = 6, 5
SIZE = NUM_OPS ** NUM_EDGES


def _check_genome(genome) -> np.ndarray:
  # Exact ints first (floats, strings, None, ragged lists refused by name; no int32 wrap-around).
  g = as_genome_array(genome, what="nb201 genome", gene_names=NB201Space.gene_names,
                      integral_floats=False)
  if g.min() < 0 or g.max() >= NUM_OPS:
    raise ValueError(f"nb201 genome: op codes must be ints in 0..4 ({dict(enumerate(NASLIB_OPS))}), "
                     f"got {g.tolist()}")
  return g.astype(np.int32)


def str_to_ops(arch_str: str) -> np.ndarray:
  """NB201 string -> NASLib op-index genome (6,) int32."""
  example = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|none~2|"
  if not isinstance(arch_str, str):
    raise ValueError(f"nb201 arch_str must be a string such as {example!r}, got "
                     f"{type(arch_str).__name__} {arch_str!r:.100}")
  nodes = arch_str.strip("|").split("|+|")
  if len(nodes) != 3:
    raise ValueError(f"nb201 arch_str: expected 3 nodes separated by '|+|', got {arch_str!r}")
  ops = {}
  for j, node in enumerate(nodes, start=1):
    toks = node.strip("|").split("|")
    if len(toks) != j:
      raise ValueError(f"nb201 arch_str: node {j} must have {j} inputs, got {node!r}")
    for tok in toks:
      # Each token is op~k with k an earlier node; anything else used to surface as an unpacking
      # ValueError, an int() error or a KeyError on the missing edge.
      name, sep, k = tok.partition("~")
      if not sep or not re.fullmatch(r"[0-9]+", k) or not 0 <= int(k) < j:
        raise ValueError(f"nb201 arch_str: token {tok!r} of node {j} must be 'op~k' with k an "
                         f"input node in 0..{j - 1}, got {arch_str!r}")
      if name not in NASLIB_OPS:
        raise ValueError(f"nb201 arch_str: op {name!r} not in {NASLIB_OPS}")
      if (int(k), j) in ops:
        raise ValueError(f"nb201 arch_str: node {j} lists input {k} twice in {arch_str!r}")
      ops[(int(k), j)] = NASLIB_OPS.index(name)
  return np.array([ops[e] for e in EDGES], np.int32)


def ops_to_str(genome) -> str:
  """NASLib op-index genome (6,) -> NB201 string."""
  g = _check_genome(genome)
  by_edge = dict(zip(EDGES, g.tolist()))
  nodes = []
  for j in range(1, 4):
    nodes.append("|" + "|".join(f"{NASLIB_OPS[by_edge[(k, j)]]}~{k}" for k in range(j)) + "|")
  return "+".join(nodes)


def genome_to_masks(genome) -> jnp.ndarray:
  """Genome (..., 6) int -> one-hot op masks (..., 6, 5) float32 (NASLib op order). Pure jnp."""
  return jnp.asarray(jnp.asarray(genome)[..., None] == jnp.arange(NUM_OPS), jnp.float32)


class NB201Space:
  """The NB201 cell space with the same surface as the EvoNAS SearchSpace where it makes sense."""
  name = "nb201"
  genome_length = NUM_EDGES
  gene_names = tuple(f"edge_{a + 1}{b + 1}" for a, b in EDGES)
  upper_bounds = np.full(NUM_EDGES, NUM_OPS, np.int32)  # choices per gene (exclusive bound)

  def size(self) -> int:
    return SIZE

  def validate(self, genome) -> np.ndarray:
    return _check_genome(genome)

  def decode(self, genome) -> str:
    return ops_to_str(genome)

  def encode(self, arch_str: str) -> np.ndarray:
    return str_to_ops(arch_str)

  def sample(self, key, num: int) -> np.ndarray:
    """Deterministic sample of `num` distinct archs (num, 6) int32, seeded by an int."""
    rng = np.random.default_rng(int(key))
    codes = rng.choice(SIZE, size=num, replace=False)
    return self.all_genomes()[codes]

  def all_genomes(self) -> np.ndarray:
    return np.array(list(itertools.product(range(NUM_OPS), repeat=NUM_EDGES)), np.int32)

  def masks(self, genome) -> jnp.ndarray:
    return genome_to_masks(genome)


def get_nb201_space() -> NB201Space:
  return NB201Space()
