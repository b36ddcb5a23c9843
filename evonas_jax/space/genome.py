"""The check every search space runs first on a user-given genome (a list, a tuple, an array, a
pareto.json row, a command-line list): it becomes an int64 array of the right length, or a
ValueError that names the space, the gene and what is allowed.

`np.asarray` alone is not enough: a ragged list raises numpy's own "inhomogeneous shape" error,
strings or None make ufunc TypeErrors, non-integral floats and NaN truncate silently on
`astype(int32)`, and ints beyond int32 wrap (2**32 would become the valid gene 0). The space's own
range checks (`SearchSpace.validate`, `AutoFormerSpace.validate`, `nb201._check_genome`) then run
on exact int64 values.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np

# Values beyond this are out of range for every gene; the bound keeps int64 arithmetic exact.
_MAX_ABS = 2 ** 62


def _short(value, limit: int = 160) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def as_genome_array(genome, *, what: str, gene_names: Sequence[str],
                    integral_floats: bool = True) -> np.ndarray:
  """`genome` as int64 (len(gene_names),), or ValueError naming `what` ("evonas genome", ...).

  integral_floats: accept floats with integral values (1.0), as the EvoNAS space always has
  (NSGA-II operators may hand back float arrays); NaN, inf and 1.5 are refused either way.
  """
  length = len(gene_names)
  if isinstance(genome, (str, bytes, Mapping)) or genome is None:
    raise ValueError(f"{what} must be a sequence of {length} integers (gene indices), got "
                     f"{type(genome).__name__} {_short(genome)}")
  try:
    g = np.asarray(genome)
  except (ValueError, TypeError, OverflowError):
    # Ragged nesting (numpy: "inhomogeneous shape") or an object numpy cannot hold.
    raise ValueError(f"{what} must be a flat sequence of {length} integers, got "
                     f"{_short(genome)}") from None
  if g.ndim == 0:
    raise ValueError(f"{what} must be a sequence of {length} integers (gene indices), got "
                     f"{type(genome).__name__} {_short(genome)}")
  if g.ndim != 1 or g.shape[0] != length:
    raise ValueError(f"{what} must have shape ({length},), got {g.shape}; genes are "
                     f"{list(gene_names)}")
  kind = "integers (or integral floats such as 2.0)" if integral_floats else "integers"
  if g.dtype == bool or g.dtype.kind in "USVMm":   # bools, strings, bytes, void, datetimes
    raise ValueError(f"{what} must hold {kind}, got dtype {g.dtype}: {_short(g.tolist())}")
  if g.dtype == object:
    vals = []
    for i, v in enumerate(g.tolist()):
      ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
      if not ok and integral_floats and isinstance(v, numbers.Real) and not isinstance(v, bool):
        ok = bool(np.isfinite(float(v))) and float(v).is_integer()
      if not ok:
        raise ValueError(f"{what} must hold {kind}: gene {i} ({gene_names[i]}) = {_short(v)}")
      vals.append(int(v))
    big = [i for i, v in enumerate(vals) if abs(v) >= _MAX_ABS]
    if big:
      i = big[0]
      raise ValueError(f"{what}: gene {i} ({gene_names[i]}) = {vals[i]} is out of range")
    return np.asarray(vals, np.int64)
  if np.issubdtype(g.dtype, np.integer):
    if g.dtype == np.uint64 and g.size and int(g.max()) >= _MAX_ABS:
      i = int(np.argmax(g))
      raise ValueError(f"{what}: gene {i} ({gene_names[i]}) = {int(g[i])} is out of range")
    return g.astype(np.int64)
  if np.issubdtype(g.dtype, np.floating):
    bad = ~np.isfinite(g) | (np.mod(np.where(np.isfinite(g), g, 0), 1) != 0) if integral_floats \
        else np.ones(g.shape, bool)
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise ValueError(f"{what} must hold {kind}: gene {i} ({gene_names[i]}) = {g[i].item()!r} "
                       f"(got {_short(g.tolist())})")
    big = np.flatnonzero(np.abs(g) >= _MAX_ABS)
    if big.size:
      i = int(big[0])
      raise ValueError(f"{what}: gene {i} ({gene_names[i]}) = {g[i].item()!r} is out of range")
    return g.astype(np.int64)
  raise ValueError(f"{what} must hold {kind}, got dtype {g.dtype}: {_short(g.tolist())}")
