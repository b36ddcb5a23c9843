"""Analytic MACs / params against XLA's cost analysis and the real parameter tree."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.nn import extract_subnet, init_supernet, subnet_model
from evonas_jax.nn.cost import arch_cost, xla_matmul_macs
from evonas_jax.nn.layers import conv_taps, depthwise_impl
from evonas_jax.space import get_space

IMAGE = (28, 28, 1)


def test_conv_taps_closed_form():
  # 3x3 pad 1 stride 1 on 3x3: valid taps per axis = 2 + 3 + 2 = 7 -> 49; counting padding 81.
  assert conv_taps(3, 3, 3, 1, count_padding=False) == 49
  assert conv_taps(3, 3, 3, 1) == 81
  # stride 2 on 4: outputs at 0, 2 -> taps (2, 3) -> 5 per axis
  assert conv_taps(4, 4, 3, 2, count_padding=False) == 25


@functools.lru_cache(maxsize=None)
def _vars(name):
  space = get_space(name, "tiny")
  return space, init_supernet(space, 10, jax.random.key(0), IMAGE)[1]


@pytest.mark.parametrize("name", ["evonas", "hybrid"])
def test_params_and_macs_match_real_network(name):
  space, v = _vars(name)
  archs = [space.largest(), space.smallest()] + [space.decode(g) for g in space.sample(4, num=4)]
  for arch in archs:
    sv = extract_subnet(v, space, arch)
    real_params = sum(x.size for x in jax.tree.leaves(sv["params"]))
    cost = arch_cost(space, arch, IMAGE, 10, count_padding=False)
    assert cost.params == real_params, arch.short()
    net = subnet_model(space, arch, 10)
    with depthwise_impl("xla"):   # so XLA sees depthwise convs as convolutions
      xla = xla_matmul_macs(net.apply, sv, jnp.zeros((1, *IMAGE)))
    assert cost.matmul_macs == xla, (arch.short(), cost.matmul_macs, xla)
    conventional = arch_cost(space, arch, IMAGE, 10)
    assert conventional.matmul_macs > cost.matmul_macs   # padding taps counted
    assert (conventional.scan_macs > 0) == ("ss2d" in arch.block_type)


def test_official_largest_cost_is_plausible():
  # VSSD-T (the max config is larger than VSSD-T) is ~4.5 GMACs / ~24M params at 224; the
  # supernet maximum with expand 4 and mlp 4 must be well above, the minimum well below.
  space = get_space("evonas", "base")
  big = arch_cost(space, space.largest(), (224, 224, 3), 1000)
  small = arch_cost(space, space.smallest(), (224, 224, 3), 1000)
  assert big.macs > 4.5e9 and big.params > 24e6
  assert small.macs < 1.5e9 and small.params < 10e6
