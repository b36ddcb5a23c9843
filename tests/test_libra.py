"""LIBRA-NAS picks the known answer on constructed tables; IG and Sturges bins by hand."""
import numpy as np
import pytest

from evonas_jax.proxies import libra


def test_sturges():
  assert libra.sturges_bins(1000) == 24  # Suite-Zero's 24-bin histograms for N = 1000


def test_info_gain_by_hand():
  # y copies z1: z1 already explains y, so any h adds 0 information.
  rng = np.random.default_rng(0)
  z = rng.random(500)
  assert abs(libra.info_gain(z, z, rng.random(500))) < 1e-12
  # y = (a, b) jointly, z1 = a: h = b explains the rest: IG = H(b) = log 2 for a fair bit.
  a = np.repeat([0.0, 1.0], 200)
  b = np.tile([0.0, 1.0], 200)
  y = 2 * a + b
  np.testing.assert_allclose(libra.info_gain(y, a, b, bins=4), np.log(2), rtol=1e-12)


def make_table(seed=0, n=1000):
  """acc = size + quality; z1 best, two close candidates: `twin` (z1's own information: low IG),
  `fresh` (new information: high IG); `biased`/`unbiased` differ in their #params bias."""
  rng = np.random.default_rng(seed)
  size = rng.normal(size=n)
  quality = rng.normal(size=n)
  acc = 0.6 * size + quality + 0.3 * rng.normal(size=n)
  z1 = acc + 0.5 * rng.normal(size=n)
  return {
      "z1": z1,
      "twin": z1 + 0.35 * rng.normal(size=n),                    # rho just below z1, same info
      "fresh": acc + 0.6 * rng.normal(size=n),                   # rho close, independent noise
      "matched": 0.6 * size + quality + 0.75 * rng.normal(size=n),
      "far": rng.normal(size=n),                                 # outside the window
  }, acc, size


def test_libra_picks_known_answer():
  scores, acc, size = make_table()
  sel = libra.libra_select(scores, acc, size)
  rho = sel["rho"]
  assert sel["selected"][0] == "z1" == max(rho, key=rho.get)
  assert "far" not in sel["window"]
  assert sel["ig"]["twin"] < sel["ig"]["fresh"]
  assert sel["selected"][1] == "twin"
  rest = [k for k in sel["window"] if k not in sel["selected"][:2]]
  want3 = min(rest, key=lambda k: abs(sel["b_val"] - sel["bias"][k]))
  assert sel["selected"][2] == want3


def test_combine_and_errors():
  s = {"a": np.array([1.0, 2, 3]), "b": np.array([3.0, 2, 1])}
  np.testing.assert_allclose(libra.combine(s, ["a", "b"], "mean_rank"), [2, 2, 2])
  np.testing.assert_allclose(libra.combine(s, ["a"], "log_rank"), np.log([1 / 3, 2 / 3, 1]))
  with pytest.raises(ValueError, match="combine must be one of"):
    libra.combine(s, ["a"], "max")
  with pytest.raises(ValueError, match="no proxy"):
    libra.libra_select({"c": np.ones(3)}, np.arange(3.0), np.arange(3.0))
