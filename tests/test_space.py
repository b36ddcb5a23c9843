"""Search spaces: official genome layout, size, validation, round trips, sampling."""
import jax
import numpy as np
import pytest

from evonas_jax.space import (D_STATE_CHOICES, EXPAND_CHOICES, MLP_CHOICES, Arch, get_space,
                              official_size)


def test_official_space_layout_and_size():
  sp = get_space("evonas")
  assert sp.genome_length == 28
  assert sp.dims == (64, 128, 256, 512) and sp.heads == (2, 4, 8, 16)
  assert sp.max_depths == (2, 4, 8, 4)
  # Official order: [mlp1, ds1, ex1, mlp2, ds2, ex2, mlp3, ds3, ex3, mlp4] + 18 depth bits.
  kinds = [n.split("[")[0] for n in sp.gene_names]
  assert kinds[:10] == ["mlp_ratio", "d_state", "expand"] * 3 + ["mlp_ratio"]
  assert kinds[10:] == ["depth"] * 18
  # 6^4 * 4^3 * 5^3 widths x (2^2-1)(2^4-1)(2^8-1)(2^4-1) depth masks, computed independently.
  assert sp.size() == 6**4 * 4**3 * 5**3 * 3 * 15 * 255 * 15 == official_size() == 1_784_592_000_000


def test_hybrid_space_adds_type_genes():
  sp = get_space("hybrid", "tiny")
  assert sp.genome_length == 32 and sp.size() == get_space("evonas").size() * 81
  assert sp.gene_names[28:] == tuple(f"block_type[stage {s}]" for s in range(1, 5))


def test_decode_known_genome():
  sp = get_space("evonas")
  g = [5, 3, 4, 0, 0, 0, 2, 1, 2, 4] + [1, 0] + [0, 1, 0, 0] + [1] * 8 + [0, 0, 0, 1]
  a = sp.decode(g)
  assert a.mlp_ratio == (4.0, 0.5, 2.0, 3.5)
  assert a.d_state[:3] == (64, 16, 32) and a.expand[:3] == (4.0, 0.5, 2.0)
  assert a.depth == ((1, 0), (0, 1, 0, 0), (1,) * 8, (0, 0, 0, 1))
  assert a.depth_counts == (1, 1, 8, 1) and a.active_blocks(1) == (1,)
  assert a.block_type == ("vssd", "vssd", "vssd", "attention")
  np.testing.assert_array_equal(sp.encode(a), g)


@pytest.mark.parametrize("name", ["evonas", "hybrid"])
def test_round_trips(name):
  sp = get_space(name, "tiny")
  gs = sp.sample(jax.random.key(3), num=200)
  assert gs.shape == (200, sp.genome_length)
  for g in gs:
    a = sp.decode(g)
    np.testing.assert_array_equal(sp.encode(a), g)
    assert Arch.from_json(a.to_json()) == a and hash(Arch.from_json(a.to_json())) == hash(a)
    assert all(c >= 1 for c in a.depth_counts)
  # Samples are diverse and depend on the key.
  assert len({tuple(g) for g in gs}) == 200
  assert not np.array_equal(sp.sample(jax.random.key(1)), sp.sample(jax.random.key(2)))
  np.testing.assert_array_equal(sp.sample(jax.random.key(1)), sp.sample(jax.random.key(1)))


def test_invalid_genomes_name_the_gene():
  sp = get_space("evonas")
  good = sp.encode(sp.largest())
  bad = good.copy(); bad[3] = 6
  with pytest.raises(ValueError, match=r"gene 3 \(mlp_ratio\[stage 2\]\) = 6.*0\.\.5.*0\.5, 1\.0"):
    sp.validate(bad)
  bad = good.copy(); bad[1] = -1
  with pytest.raises(ValueError, match=r"d_state\[stage 1\].*\(16, 32, 48, 64\)"):
    sp.decode(bad)
  bad = good.copy(); bad[12:16] = 0
  with pytest.raises(ValueError, match=r"stage 2 \(genes 12\.\.15\) are all 0"):
    sp.validate(bad)
  with pytest.raises(ValueError, match=r"shape \(28,\)"):
    sp.validate(good[:-1])
  with pytest.raises(ValueError, match="integers"):
    sp.validate(good + 0.5)
  with pytest.raises(ValueError, match=r"expand of stage 1 = 1\.5.*choices"):
    sp.encode(Arch((4.0,) * 4, (64, 64, 64, 16), (1.5, 4, 4, 2), sp.largest().depth,
                   sp.default_types))
  with pytest.raises(ValueError, match="fixed block types"):
    sp.encode(get_space("hybrid").decode(np.r_[good, [1, 1, 1, 1]]))
  with pytest.raises(ValueError, match="unknown search space 'foo'.*evonas"):
    get_space("foo")
  with pytest.raises(ValueError, match="unknown preset"):
    get_space("evonas", "huge")


def test_sampling_respects_opened_choices():
  sp = get_space("evonas", "tiny")
  gs = sp.sample(7, num=300, choices={"d_state": (48, 64), "mlp_ratio": (4.0,), "expand": (4.0,),
                                      "depth": False})
  archs = [sp.decode(g) for g in gs]
  assert {a.d_state[s] for a in archs for s in range(3)} == {48, 64}
  assert {a.mlp_ratio for a in archs} == {(4.0,) * 4}
  assert all(a.depth_counts == sp.max_depths for a in archs)
  with pytest.raises(ValueError, match="opens none"):
    sp.sample(0, choices={"d_state": (17,)})


def test_largest_smallest():
  sp = get_space("evonas", "tiny")
  big, small = sp.largest(), sp.smallest()
  assert big.mlp_ratio == (max(MLP_CHOICES),) * 4 and big.depth_counts == (2, 4, 8, 4)
  assert small.expand[:3] == (min(EXPAND_CHOICES),) * 3 and small.depth_counts == (1, 1, 1, 1)
  assert small.d_state[:3] == (min(D_STATE_CHOICES),) * 3

