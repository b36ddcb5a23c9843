"""Analytic cost of a subnet: MACs and parameter counts, per arch, without building it.

MACs count multiply-accumulates of matmuls and convolutions (what XLA's cost analysis reports as
2 flops each), plus, separately, the selective-scan recurrence of SS2D mixers (elementwise, not
a matmul). Normalisations, activations and softmax are not MACs. Cross-checked against XLA's
cost analysis of the sliced network and against the real parameter tree in tests/test_cost.py.
"""
from __future__ import annotations

import dataclasses

from evonas_jax.nn.block import MIXERS
from evonas_jax.nn.layers import conv_taps
from evonas_jax.nn.stem import PatchMerging, Stem
from evonas_jax.nn.supernet import subnet_widths
from evonas_jax.space import Arch, SearchSpace


@dataclasses.dataclass(frozen=True)
class Cost:
  """Per-image cost. macs = matmul_macs + scan_macs."""
  matmul_macs: int
  scan_macs: int
  params: int
  per_stage_macs: tuple[int, ...]

  @property
  def macs(self) -> int:
    return self.matmul_macs + self.scan_macs


def _ceil2(n: int) -> int:
  return -(-n // 2)


def arch_cost(space: SearchSpace, arch: Arch, image_shape, num_classes: int,
              count_padding: bool = True) -> Cost:
  """Cost of the standalone network of `arch` on one (H, W, Cin) image.

  count_padding: conv MACs convention (see layers.conv_taps); False matches XLA's count.
  """
  h, w, cin = image_shape
  dims = space.dims
  matmul = Stem.macs(h, w, cin, dims[0], count_padding)
  h, w = _ceil2(_ceil2(h)), _ceil2(_ceil2(w))
  half = dims[0] // 2
  params = (9 * cin * half + 2 * 9 * half * half + 9 * half * 4 * dims[0] + 4 * dims[0] * dims[0]
            + 2 * (3 * half + 4 * dims[0] + dims[0]))   # convs + BatchNorm scale/bias
  scan, per_stage = 0, []
  for s, c in enumerate(dims):
    stage_macs = 0
    if s > 0:
      stage_macs += PatchMerging.macs(h, w, dims[s - 1], c, count_padding)
      p = dims[s - 1]
      params += p * 8 * p + 8 * p + 10 * 8 * p + 8 * p * c + 3 * c   # convs + biases + BN
      h, w = _ceil2(h), _ceil2(w)
    hidden, wd = subnet_widths(space, arch, s)
    mixer = MIXERS[arch.block_type[s]]
    taps3 = conv_taps(h, w, 3, 1, count_padding)
    m = mixer.macs(h, w, wd, taps3)
    n = arch.depth_counts[s]
    L = h * w
    stage_macs += n * (2 * taps3 * c + 2 * L * c * hidden + m["matmul"] + m["scan"])
    scan += n * m["scan"]
    params += n * (2 * 10 * c + 4 * c + 2 * c * hidden + hidden + c + mixer.params(wd))
    matmul += stage_macs - n * m["scan"]
    per_stage.append(stage_macs)
  matmul += dims[-1] * num_classes
  params += 2 * dims[-1] + dims[-1] * num_classes + num_classes
  return Cost(matmul, scan, params, tuple(per_stage))


# ---------------------------------------------------------------------------- XLA cross-check
_MAC_PRIMITIVES = ("dot_general", "conv_general_dilated")


def xla_matmul_macs(fn, *args) -> int:
  """MACs of every matmul/conv in `fn(*args)`, each costed by XLA's own cost analysis.

  The jaxpr of `fn` is walked (into pjit, custom_vjp/jvp and scan bodies, the latter times their
  length); each dot_general / conv_general_dilated equation is lowered alone and XLA's
  `cost_analysis()["flops"] / 2` is summed. Elementwise ops, which XLA also counts as flops, are
  left out so the number is comparable with `Cost.matmul_macs`.
  """
  import jax

  cache: dict = {}

  def eqn_macs(eqn) -> float:
    avals = tuple(v.aval for v in eqn.invars)
    key = (eqn.primitive.name, tuple((a.shape, str(a.dtype)) for a in avals), repr(eqn.params))
    if key not in cache:
      f = lambda *xs: eqn.primitive.bind(*xs, **eqn.params)
      shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
      cache[key] = jax.jit(f).trace(*shapes).lower().cost_analysis()["flops"] / 2
    return cache[key]

  def walk(jaxpr, mult: int) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in _MAC_PRIMITIVES:
        total += mult * eqn_macs(eqn)
        continue
      if eqn.primitive.name in ("while", "cond"):
        raise NotImplementedError(f"cannot cost {eqn.primitive.name} statically")
      inner = mult * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
      for p in eqn.params.values():
        sub = getattr(p, "jaxpr", p)
        if hasattr(sub, "eqns"):
          total += walk(sub, inner)
    return total

  return int(round(walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)))
