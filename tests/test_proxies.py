"""Every proxy against an independent float64 numpy implementation on a tiny masked MLP, and
vmap over archs / init seeds == a Python loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.proxies import get_proxy, proxy_names
from evonas_jax.proxies.common import count_distinct_patterns, layer_depth_bins
from evonas_jax.proxies.lswag import lswag_parts, select_band
from evonas_jax.proxies.toy import tiny_proxy_model

D, H, K, B = 4, (6, 5), 3, 8


@pytest.fixture(scope="module")
def setup():
  module, pm = tiny_proxy_model(D, H, K)
  x = jax.random.normal(jax.random.key(1), (B, D))
  y = jnp.arange(B) % K
  masks = {"h1": jnp.array([1, 1, 0, 1, 1, 1.]), "h2": jnp.array([1, 0, 1, 1, 1.])}
  params = module.init(jax.random.key(0), x, masks)["params"]
  return pm, params, masks, {"image": x, "label": y}


def np_params(params):
  return [np.asarray(params[n]["kernel"], np.float64) for n in ("W1", "W2", "W3")], \
      np.asarray(params["W3"]["bias"], np.float64)


def np_forward(W, b, x, m):
  z1 = x @ W[0]
  a1 = np.maximum(z1, 0) * m[0]
  z2 = a1 @ W[1]
  a2 = np.maximum(z2, 0) * m[1]
  return z1, a1, z2, a2, a2 @ W[2] + b


def np_backward(W, x, m, cache, g_out):
  """Manual backprop of cotangent g_out (B, K) -> (kernel grads, d/dz1, d/dz2, d/dx)."""
  z1, a1, z2, a2, _ = cache
  dW3 = a2.T @ g_out
  gz2 = (g_out @ W[2].T) * m[1] * (z2 > 0)
  dW2 = a1.T @ gz2
  gz1 = (gz2 @ W[1].T) * m[0] * (z1 > 0)
  return [x.T @ gz1, dW2, dW3], gz1, gz2, gz1 @ W[0].T


def np_ce_grad(o, y):
  p = np.exp(o - o.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  return p - np.eye(o.shape[1])[y]  # d CE_i / d o_i, per sample


def np_mean_grads(W, b, x, y, m):
  cache = np_forward(W, b, x, m)
  return np_backward(W, x, m, cache, np_ce_grad(cache[-1], y) / len(y))


def inputs(setup):
  pm, params, masks, batch = setup
  W, b = np_params(params)
  m = [np.asarray(masks["h1"], np.float64), np.asarray(masks["h2"], np.float64)]
  return W, b, np.asarray(batch["image"], np.float64), np.asarray(batch["label"]), m


def run(setup, name, **kw):
  pm, params, masks, batch = setup
  fn = get_proxy(name)
  return float(jax.jit(lambda p: fn(pm, p, masks, batch, jax.random.key(0), **kw))(params))


def ref_patterns(x, W, b, m):
  z1, _, z2, _, _ = np_forward(W, b, x, m)
  return [(z1 > 0, m[0] > 0), (z2 > 0, m[1] > 0)]


def test_registry_has_all_proxies():
  want = {"lswag", "zico", "swap", "nwot", "synflow", "snip", "grasp", "grad_norm", "jacov",
          "fisher", "params", "macs"}
  assert want <= set(proxy_names())
  with pytest.raises(ValueError, match="unknown proxy 'nope'.*allowed"):
    get_proxy("nope")


def test_grad_norm_snip(setup):
  W, b, x, y, m = inputs(setup)
  g = np_mean_grads(W, b, x, y, m)[0]
  np.testing.assert_allclose(run(setup, "grad_norm"), sum(np.linalg.norm(gl) for gl in g),
                             rtol=1e-5)
  np.testing.assert_allclose(run(setup, "snip"), sum(np.abs(w * gl).sum() for w, gl in zip(W, g)),
                             rtol=1e-5)


def test_grasp_finite_difference_hessian(setup):
  W, b, x, y, m = inputs(setup)
  g = np_mean_grads(W, b, x, y, m)[0]
  eps = 1e-6
  gp = np_mean_grads([w + eps * gl for w, gl in zip(W, g)], b, x, y, m)[0]
  gm = np_mean_grads([w - eps * gl for w, gl in zip(W, g)], b, x, y, m)[0]
  hg = [(a - c) / (2 * eps) for a, c in zip(gp, gm)]
  ref = sum((-w * h).sum() for w, h in zip(W, hg))
  np.testing.assert_allclose(run(setup, "grasp"), ref, rtol=1e-3, atol=1e-6)


def test_grasp_nb201_bn_scale_invariance():
  """NB201 net, train-mode BN, float64. A conv followed by BN is scale invariant, L(cW) = L(W),
  so H W = -g on that layer's block and its GraSP term -W . (H g) is |g|^2 (up to BN's eps).
  Reference: -W . (H g) with H g from central differences of the gradient along g."""
  from evonas_jax.nn import nb201 as nbnet
  from evonas_jax.proxies import nb201_proxy_model
  from evonas_jax.proxies.common import weight_loss_fn
  with jax.enable_x64(True):
    cfg = nbnet.NB201Config(channels=2, cells=1, num_classes=5, image_size=8)
    pm = nb201_proxy_model(cfg)
    params = jax.tree.map(lambda a: a.astype(jnp.float64),
                          nbnet.init_nb201(cfg, jax.random.key(0))[1]["params"])
    batch = {"image": jax.random.normal(jax.random.key(1), (6, 8, 8, 3), jnp.float64),
             "label": jnp.arange(6) % 5}
    m = jnp.zeros((6, 5)).at[:, 2].set(1.0).at[1].set(jnp.eye(5)[3]).at[4].set(jnp.eye(5)[0])
    m = m.astype(jnp.float64)
    got = float(jax.jit(lambda p: get_proxy("grasp")(pm, p, m, batch, None))(params))
    f = jax.jit(jax.grad(weight_loss_fn(pm, params, m, batch)))
    w = pm.weights(params)
    g = f(w)
    eps = 1e-7  # small: a step across a ReLU kink biases the difference quotient
    hg = [(a - b) / (2 * eps) for a, b in zip(f([wl + eps * gl for wl, gl in zip(w, g)]),
                                              f([wl - eps * gl for wl, gl in zip(w, g)]))]
    is_bn = [not (p[0] == "classifier" or "short" in p) for p in pm.weight_paths]
    fd = [float(jnp.sum(-wl * hl)) for wl, hl in zip(w, hg)]
    sq = [float(jnp.sum(gl ** 2)) for gl in g]
  assert sum(not b for b in is_bn) == 3
  np.testing.assert_allclose(got, sum(fd), rtol=1e-6)
  # Scale invariance holds up to BN's eps (var + 1e-5), hence not to round-off.
  bn_fd = sum(v for v, b in zip(fd, is_bn) if b)
  assert bn_fd > 0
  np.testing.assert_allclose(bn_fd, sum(v for v, b in zip(sq, is_bn) if b), rtol=5e-3)


def test_fisher(setup):
  W, b, x, y, m = inputs(setup)
  cache = np_forward(W, b, x, m)
  g_out = np_ce_grad(cache[-1], y) / len(y)
  _, gz1, gz2, _ = np_backward(W, x, m, cache, g_out)
  per_layer = [0.5 * np.mean((a * ga) ** 2, 0).sum()
               for a, ga in ((cache[0], gz1), (cache[2], gz2), (cache[4], g_out))]
  np.testing.assert_allclose(run(setup, "fisher", weighting="channel"), sum(per_layer), rtol=1e-4)
  # Suite-Zero broadcasts each channel's value to its fan-in weights: D, H1, H2 inputs.
  fan_in = (D, H[0], H[1])
  np.testing.assert_allclose(run(setup, "fisher"), sum(f * v for f, v in zip(fan_in, per_layer)),
                             rtol=1e-4)
  with pytest.raises(ValueError, match="weighting='nope'.*allowed"):
    run(setup, "fisher", weighting="nope")


def test_fisher_nb201_scanned_cells_vs_forward_mode():
  """NB201 net with 2 scanned cells per stage and train-mode BN. Reference: forward-mode
  directional derivatives of the loss along a * e_(layer, cell, sample, channel) (each gives
  sum_spatial a * dL/da for one sample and channel), with each layer's fan-in written out from the
  NB201 layout. Catches the cell axis of scanned probes being read as the batch axis."""
  from evonas_jax.nn import nb201 as nbnet
  from evonas_jax.proxies import nb201_proxy_model
  from evonas_jax.proxies.common import ce_loss
  cfg = nbnet.NB201Config(channels=2, cells=2, num_classes=5, image_size=8)
  pm = nb201_proxy_model(cfg)
  params = nbnet.init_nb201(cfg, jax.random.key(0))[1]["params"]
  bsz = 4
  x = jax.random.normal(jax.random.key(1), (bsz, 8, 8, 3))
  y = jnp.arange(bsz) % 5
  # conv3x3 everywhere except one conv1x1 edge and one skip edge.
  m = jnp.zeros((6, 5)).at[:, 2].set(1.0).at[1].set(jnp.eye(5)[3]).at[4].set(jnp.eye(5)[0])
  p0 = pm.zero_perturbations(params, m, x)
  acts = pm.apply_probed(params, p0, m, x)[1]
  leaves, tdef = jax.tree_util.tree_flatten_with_path(p0)
  names = [tuple(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]
  outs = {tuple(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(acts)[0]}
  a_list = [outs[n[:-1] + (n[-1] + "_out",)] for n in names]  # sow(P + "_out") pairs perturb(P)

  def eps_shape(name, a):  # stage leaves: (cells, B, H, W, C); others (B, ..., C)
    lead = 2 if name[0].startswith("stage") else 1
    return a.shape[:lead] + (1,) * (a.ndim - lead - 1) + a.shape[-1:]
  shapes = [eps_shape(n, a) for n, a in zip(names, a_list)]
  sizes = [int(np.prod(s)) for s in shapes]

  def loss_of_eps(eps):
    parts, off = [], 0
    for a, s, k in zip(a_list, shapes, sizes):
      parts.append(a * eps[off:off + k].reshape(s))
      off += k
    return ce_loss(pm.apply_probed(params, jax.tree_util.tree_unflatten(tdef, parts), m, x)[0], y)
  f = np.asarray(jax.jit(jax.jacfwd(loss_of_eps))(jnp.zeros(sum(sizes))), np.float64)

  c = cfg.channels
  def fan_in(name):
    if name == ("probe",):
      return 4 * c
    if name[0] == "stem":
      return 27
    if name[0].startswith("red"):
      cs = c * 2 ** int(name[0][3:])
      return {"conv_a": 9 * cs // 2, "conv_b": 9 * cs, "short": cs // 2}[name[1]]
    cs = c * 2 ** int(name[0][5:])
    return 9 * cs if name[2].endswith("conv3") else cs
  ref_param = ref_channel = 0.0
  off = 0
  for n, s, k in zip(names, shapes, sizes):
    fn = f[off:off + k].reshape(s)
    off += k
    bax = 1 if n[0].startswith("stage") else 0
    fc = 0.5 * np.mean(fn ** 2, axis=bax)  # mean over samples
    ref_channel += fc.sum()
    ref_param += fan_in(n) * fc.sum()
  fisher = get_proxy("fisher")
  batch = {"image": x, "label": y}
  got_p = float(jax.jit(lambda p: fisher(pm, p, m, batch, None))(params))
  got_c = float(jax.jit(lambda p: fisher(pm, p, m, batch, None, weighting="channel"))(params))
  assert ref_channel > 0
  np.testing.assert_allclose(got_c, ref_channel, rtol=2e-4)
  np.testing.assert_allclose(got_p, ref_param, rtol=2e-4)


def test_jacov():
  """Own setup with input dim 16 > batch 6 so the Jacobian correlation is full rank (with rank
  deficiency the 1/(lambda + 1e-5) term amplifies float32 round-off of near-zero eigenvalues)."""
  module, pm = tiny_proxy_model(16, (12, 10), K)
  x = jax.random.normal(jax.random.key(2), (6, 16))
  masks = {"h1": jnp.ones(12), "h2": jnp.ones(10)}
  params = module.init(jax.random.key(4), x, masks)["params"]
  batch = {"image": x, "label": jnp.arange(6) % K}
  W, b = np_params(params)
  m = [np.ones(12), np.ones(10)]
  xn = np.asarray(x, np.float64)
  cache = np_forward(W, b, xn, m)
  jac = np_backward(W, xn, m, cache, np.ones_like(cache[-1]))[3]
  assert (jac.std(1) > 0).all()
  got = float(jax.jit(lambda p: get_proxy("jacov")(pm, p, masks, batch, jax.random.key(0)))(params))
  lam = np.linalg.eigvals(np.corrcoef(jac)).real
  k = 1e-5
  ref = -np.sum(np.log(lam + k) + 1.0 / (lam + k))
  np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_synflow(setup):
  W, b, x, y, m = inputs(setup)
  Wa, ba = [np.abs(w) for w in W], np.abs(b)
  ones = np.ones((1, D))
  cache = np_forward(Wa, ba, ones, m)
  g = np_backward(Wa, ones, m, cache, np.ones((1, K)))[0]
  ref = np.log(sum((w * gl).sum() for w, gl in zip(Wa, g)))
  np.testing.assert_allclose(run(setup, "synflow"), ref, rtol=1e-5)


def test_nwot_and_swap(setup):
  W, b, x, y, m = inputs(setup)
  cols = np.concatenate([c[:, on] for c, on in ref_patterns(x, W, b, m)], axis=1).astype(float)
  kmat = cols @ cols.T + (1 - cols) @ (1 - cols).T
  np.testing.assert_allclose(run(setup, "nwot"), np.linalg.slogdet(kmat)[1], rtol=1e-5)
  assert run(setup, "swap") == len(np.unique(cols.T, axis=0))


def test_count_distinct_patterns_brute_force():
  rng = np.random.default_rng(0)
  for b in (3, 33, 64):
    codes = rng.random((b, 200)) > 0.5
    codes[:, 100:150] = codes[:, :50]  # duplicates
    w = (rng.random(200) > 0.3).astype(np.float32)
    want = len({tuple(c) for c, on in zip(codes.T, w) if on})
    assert float(count_distinct_patterns(jnp.asarray(codes), jnp.asarray(w))) == want


def test_zico(setup):
  W, b, x, y, m = inputs(setup)
  g = [np_mean_grads(W, b, x[s], y[s], m)[0] for s in (slice(0, B // 2), slice(B // 2, B))]
  ref = 0.0
  for layer in zip(*g):
    st = np.stack(layer)
    std, mean_abs = st.std(0), np.abs(st).mean(0)
    ok = std > 0
    ref += np.log((mean_abs[ok] / std[ok]).sum())
  np.testing.assert_allclose(run(setup, "zico"), ref, rtol=1e-4)


def np_lswag_terms(W, b, x, y, m, variance):
  if variance == "per_sample":
    cache = np_forward(W, b, x, m)
    d = np_ce_grad(cache[-1], y)
    gs = []
    for i in range(len(y)):
      gi = np.zeros_like(d)
      gi[i] = d[i]
      gs.append(np_backward(W, x, m, cache, gi)[0])
  else:
    gs = [np_mean_grads(W, b, x[s], y[s], m)[0] for s in (slice(0, B // 2), slice(B // 2, B))]
  terms = []
  for layer in zip(*gs):
    a = np.abs(np.stack(layer))
    var = a.var(0)
    ok = var > 1e-12 * (a ** 2).mean(0)
    terms.append(np.log((1.0 / np.sqrt(var[ok])).sum()))
  return terms


@pytest.mark.parametrize("variance", ["per_sample", "minibatch"])
def test_lswag_full_band(setup, variance):
  W, b, x, y, m = inputs(setup)
  terms = np_lswag_terms(W, b, x, y, m, variance)
  cols = np.concatenate([c[:, on] for c, on in ref_patterns(x, W, b, m)], axis=1)
  psi = len(np.unique(cols.T, axis=0))
  pm, params, masks, batch = setup
  lam, psi_j = jax.jit(lambda p: lswag_parts(pm, p, masks, batch, variance=variance))(params)
  np.testing.assert_allclose(float(lam), sum(terms), rtol=1e-4)
  assert float(psi_j) == psi
  np.testing.assert_allclose(run(setup, "lswag", variance=variance), sum(terms) * psi, rtol=1e-4)


def test_lswag_band_by_hand(setup):
  """3 weight layers -> depth bins 0, 3, 6; 2 activation layers -> bins 0, 5 (0-based deciles).
  Band (3, 4): Lambda = term of W2 only; Psi cut at bin 4 keeps the first activation layer."""
  W, b, x, y, m = inputs(setup)
  terms = np_lswag_terms(W, b, x, y, m, "per_sample")
  pats = ref_patterns(x, W, b, m)
  psi1 = len(np.unique(pats[0][0][:, pats[0][1]].T, axis=0))
  pm, params, masks, batch = setup
  lam, psi = jax.jit(lambda p: lswag_parts(pm, p, masks, batch, band=(3, 4)))(params)
  np.testing.assert_allclose(float(lam), terms[1], rtol=1e-4)
  assert float(psi) == psi1
  with pytest.raises(ValueError, match="band"):
    lswag_parts(pm, params, masks, batch, band=(5, 2))


def test_layer_depth_bins_and_band_selection():
  bins = layer_depth_bins(jnp.array([True, False, True, True, True]))
  assert bins.tolist() == [0, -1, 2, 5, 7]
  mean = np.array([1, 1, 1, 5, 6, 5, 1, 1, 1, 1.0])
  assert select_band(mean) == (3, 5)
  assert select_band(np.array([np.nan, 2, 9, 1, 1, 1, 1, 1, 1, 1.0])) == (2, 2)


def test_params_macs(setup):
  pm, params, masks, batch = setup
  h1, h2 = 5, 4  # active units
  assert run(setup, "macs") == D * h1 + h1 * h2 + h2 * K
  assert run(setup, "params") == D * h1 + h1 * h2 + h2 * K + K


def test_vmap_over_archs_and_seeds_equals_loop(setup):
  pm, params, masks, batch = setup
  module, _ = tiny_proxy_model(D, H, K)
  rng = np.random.default_rng(3)
  archs = {"h1": jnp.asarray(rng.random((3, 6)) > 0.3, jnp.float32),
           "h2": jnp.asarray(rng.random((3, 5)) > 0.3, jnp.float32)}
  seeds = jax.vmap(lambda k: module.init(k, batch["image"], masks)["params"])(
      jax.random.split(jax.random.key(7), 2))
  for name in ("lswag", "nwot", "synflow", "fisher"):
    fn = get_proxy(name)
    one = jax.jit(lambda p, mk: fn(pm, p, mk, batch, jax.random.key(0)))
    many = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))(seeds, archs)
    for s in range(2):
      for a in range(3):
        p = jax.tree.map(lambda t: t[s], seeds)
        mk = jax.tree.map(lambda t: t[a], archs)
        np.testing.assert_allclose(float(many[s, a]), float(one(p, mk)), rtol=1e-5, atol=1e-6)
