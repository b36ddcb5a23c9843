"""NB201 space encodings vs benchdata, and the masked cell network vs an independent
active-ops-only reference forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.nn import nb201 as N
from evonas_jax.space import nb201 as S

CFG = N.NB201Config(channels=4, cells=2, num_classes=5, image_size=8)


@pytest.fixture(scope="module")
def table():
  # The subset shipped in the package (tests/test_benchdata.py checks it against the
  # originals): always present, so a missing file is a failure, not a skip.
  from evonas_jax.proxies.benchdata import load_nb201_table
  return load_nb201_table()


def test_encodings_round_trip_on_benchdata(table):
  strs = table["arch_str"]
  assert len(strs) == 15625 and len(set(strs)) == 15625
  for s, t in zip(strs, table["naslib_op_indices"]):
    g = S.str_to_ops(s)
    assert tuple(g.tolist()) == tuple(int(v) for v in t.strip("()").split(","))
    assert S.ops_to_str(g) == s
  # every genome of the product space appears exactly once
  got = {tuple(S.str_to_ops(s).tolist()) for s in strs}
  assert got == {tuple(g) for g in S.NB201Space().all_genomes().tolist()}


def test_bad_inputs_name_the_field():
  with pytest.raises(ValueError, match="op codes must be ints in 0..4"):
    S.ops_to_str([0, 1, 2, 3, 4, 5])
  with pytest.raises(ValueError, match="not in"):
    S.str_to_ops("|conv~0|+|skip_connect~0|none~1|+|none~0|none~1|none~2|")


def test_sample_is_deterministic_and_distinct():
  sp = S.NB201Space()
  a, b = sp.sample(3, 50), sp.sample(3, 50)
  assert (a == b).all() and len({tuple(r) for r in a.tolist()}) == 50


def test_params_match_suite_zero_exactly(table):
  """Our analytic #params of the C=16, N=5 network == Suite-Zero's `params` (in M) on every
  unique net (NASLib counted them on the PyTorch network)."""
  cfg = N.NB201Config()
  ok = ~np.isnan(table["sz_c10_params"])
  g = np.stack([S.str_to_ops(s) for s in table["arch_str"][ok]])
  p = jax.jit(jax.vmap(lambda m: N.nb201_cost(cfg, m)["params"]))(S.genome_to_masks(g))
  np.testing.assert_allclose(np.asarray(p) / 1e6, table["sz_c10_params"][ok], atol=5e-7)


# ---- independent reference forward: only the active ops, plain lax convs ----------------------

def _conv(x, k, stride=1):
  p = k.shape[0] // 2
  return jax.lax.conv_general_dilated(x, k, (stride, stride), ((p, p), (p, p)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(x, p):
  m, v = x.mean((0, 1, 2)), x.var((0, 1, 2))
  return (x - m) / jnp.sqrt(v + 1e-5) * p["scale"] + p["bias"]


def _rcb(x, p, stride=1):
  return _bn(_conv(jax.nn.relu(x), p["pconv"]["conv"]["kernel"], stride), p["bn"])


def _pool(x):
  b, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  op = jnp.pad(jnp.ones((1, h, w, 1)), ((0, 0), (1, 1), (1, 1), (0, 0)))
  s = sum(xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
  n = sum(op[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
  return s / n


def reference_forward(params, genome, x):
  x = _bn(_conv(x, params["stem"]["conv"]["kernel"]), params["stem_bn"])
  for s in range(3):
    if s:
      r = params[f"red{s}"]
      a = _rcb(x, r["conv_a"], 2)
      b = _rcb(a, r["conv_b"])
      sc = x.reshape(x.shape[0], x.shape[1] // 2, 2, x.shape[2] // 2, 2, -1).mean((2, 4))
      x = _conv(sc, r["short"]["conv"]["kernel"]) + b
    cells = params[f"stage{s}"]["cells"]
    for c in range(CFG.cells):
      cp = jax.tree.map(lambda t: t[c], cells)
      nodes = [x]
      for j in range(1, 4):
        acc = jnp.zeros_like(x)
        for e, (k, jj) in enumerate(S.EDGES):
          if jj != j:
            continue
          op = S.NASLIB_OPS[genome[e]]
          h = nodes[k]
          if op == "skip_connect":
            acc = acc + h
          elif op == "nor_conv_3x3":
            acc = acc + _rcb(h, cp[f"e{e}_conv3"])
          elif op == "nor_conv_1x1":
            acc = acc + _rcb(h, cp[f"e{e}_conv1"])
          elif op == "avg_pool_3x3":
            acc = acc + _pool(h)
        nodes.append(acc)
      x = nodes[3]
  x = jax.nn.relu(_bn(x, params["last_bn"])).mean((1, 2))
  return x @ params["classifier"]["kernel"] + params["classifier"]["bias"]


@pytest.fixture(scope="module")
def net():
  model, v = N.init_nb201(CFG, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  return model, v["params"], x


GENOMES = np.array([[2, 3, 0, 4, 2, 1], [1, 1, 1, 1, 1, 1], [0, 4, 3, 2, 0, 4], [4, 2, 1, 0, 3, 2]])


def test_masked_equals_reference_and_vmap_equals_loop(net):
  model, params, x = net
  f = jax.jit(lambda m: model.apply({"params": params}, x, m))
  many = jax.jit(jax.vmap(lambda m: model.apply({"params": params}, x, m)))(
      S.genome_to_masks(GENOMES))
  for i, g in enumerate(GENOMES):
    ref = reference_forward(params, g, x)
    np.testing.assert_allclose(f(S.genome_to_masks(g)), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(many[i], ref, rtol=1e-5, atol=1e-5)


def test_inactive_ops_get_zero_gradient(net):
  """The proxies' layer bookkeeping relies on: kernel gradient == 0 exactly iff op inactive."""
  model, params, x = net
  from evonas_jax.proxies import nb201_proxy_model
  from evonas_jax.proxies.common import weight_grads
  pm = nb201_proxy_model(CFG)
  g = GENOMES[2]  # every op reaches the output (a dead branch also has zero gradient)
  batch = {"image": x, "label": jnp.arange(4) % 5}
  _, grads = jax.jit(lambda p: weight_grads(pm, p, S.genome_to_masks(g), batch))(params)
  ops = N.weight_op_index(CFG)
  assert len(grads) == len(pm.weight_paths) == 1 + 2 * 3 + 3 * CFG.cells * 12 + 1
  for (e_op, gl) in zip(ops, grads):
    nz = bool(jnp.any(gl != 0))
    if e_op is None:
      assert nz
    else:
      e, op = e_op
      assert nz == (g[e] == op), (e, op)


def test_cost_counts_active_params(net):
  """nb201_cost params == brute-force sum of the sizes of the params the arch uses."""
  model, params, x = net
  for g in GENOMES:
    want = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      names = [str(getattr(k, "key", k)) for k in path]
      if names[0].startswith("stage"):
        e, op = int(names[2][1]), names[2].split("_")[1]
        if S.NASLIB_OPS[g[e]] != {"conv3": "nor_conv_3x3", "conv1": "nor_conv_1x1"}[op]:
          continue
      want += leaf.size
    got = float(N.nb201_cost(CFG, S.genome_to_masks(g))["params"])
    assert got == want
