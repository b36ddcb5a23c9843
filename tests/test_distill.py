"""CA-DDKD losses and the attention projector against independent numpy/scipy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from evonas_jax import distill as D
from evonas_jax.nn.projector import AttentionProjector


def _rand(shape, seed=0, scale=1.0, offset=0.0):
  return (np.random.RandomState(seed).randn(*shape) * scale + offset).astype(np.float32)


# ------------------------------------------------------------------------------------- DCT


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_dct_matrix_orthonormal_and_matches_scipy(n):
  d = np.asarray(D.dct_matrix(n), np.float64)
  np.testing.assert_allclose(d @ d.T, np.eye(n), atol=1e-6)
  np.testing.assert_allclose(d, scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0), atol=1e-6)


def test_dct2_matches_scipy_and_inverts():
  x = _rand((2, 5, 7, 3), seed=1)
  np.testing.assert_allclose(np.asarray(D.dct2(x)), scipy.fft.dctn(x, type=2, axes=(1, 2), norm="ortho"),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(D.idct2(D.dct2(x))), x, atol=1e-5)
  np.testing.assert_allclose(np.asarray(D.idct2(x)), scipy.fft.idctn(x, type=2, axes=(1, 2), norm="ortho"),
                             rtol=1e-5, atol=1e-5)


def test_zero_dc_frequency_equals_mean_subtraction():
  # The issue demands this: DCT with the DC term zeroed, inverted, is x - mean_HW(x).
  x = _rand((3, 6, 4, 5), seed=2, offset=3.0)  # A large mean makes a wrong DC handling obvious.
  ref = x - x.mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(np.asarray(D.zero_dc_frequency(x)), ref, atol=2e-5)
  np.testing.assert_allclose(np.asarray(D.subtract_spatial_mean(x)), ref, atol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_frequency_loss_dct_equals_mean(reduction):
  p, t = _rand((2, 4, 5, 6), 3, offset=1.0), _rand((2, 4, 5, 6), 4, offset=-2.0)
  a = float(D.frequency_loss(p, t, reduction, via="dct"))
  b = float(D.frequency_loss(p, t, reduction, via="mean"))
  assert a > 0
  np.testing.assert_allclose(a, b, rtol=1e-5)


# ------------------------------------------------------------------------------ feature losses


def _np_norm(v, eps=1e-12):
  return v / max(np.sqrt(np.sum(v.astype(np.float64) ** 2)), eps)


def _np_spatial(p, t, reduction):
  """Naive loop over pixels: Σ ‖n_c(p) − n_c(t)‖² (sum or mean over all elements) / N."""
  n, h, w, c = p.shape
  total = 0.0
  for i in range(n):
    for y in range(h):
      for x in range(w):
        total += np.sum((_np_norm(p[i, y, x]) - _np_norm(t[i, y, x])) ** 2)
  if reduction == "mean":
    total /= n * h * w * c
  return total / n


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_spatial_loss_matches_numpy_loop(reduction):
  p, t = _rand((2, 3, 4, 5), 5), _rand((2, 3, 4, 5), 6)
  p[0, 1, 2] = 0.0  # An all-zero pixel: eps-safe normalisation gives 0, not NaN.
  np.testing.assert_allclose(float(D.spatial_loss(p, t, reduction)), _np_spatial(p, t, reduction), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_frequency_loss_matches_scipy_dct_loop(reduction):
  p, t = _rand((2, 3, 4, 5), 7, offset=0.5), _rand((2, 3, 4, 5), 8)

  def zero_dc(x):  # Reference through scipy's DCT, independent of our implementation.
    y = scipy.fft.dctn(x.astype(np.float64), type=2, axes=(1, 2), norm="ortho")
    y[:, 0, 0, :] = 0.0
    return scipy.fft.idctn(y, type=2, axes=(1, 2), norm="ortho")

  ref = _np_spatial(zero_dc(p), zero_dc(t), reduction)
  for via in ("mean", "dct"):
    np.testing.assert_allclose(float(D.frequency_loss(p, t, reduction, via=via)), ref, rtol=1e-5)


def test_channel_normalize_gradient_finite_at_zero():
  g = jax.grad(lambda x: jnp.sum(D.channel_normalize(x) * 2.0))(jnp.zeros((1, 2, 2, 3)))
  assert np.isfinite(np.asarray(g)).all()
  g = jax.grad(lambda p: D.spatial_loss(p, jnp.ones((1, 2, 2, 3))))(jnp.zeros((1, 2, 2, 3)))
  assert np.isfinite(np.asarray(g)).all()


def test_feature_loss_errors():
  p = jnp.zeros((1, 2, 2, 3))
  with pytest.raises(ValueError, match="reduction"):
    D.spatial_loss(p, p, "max")
  with pytest.raises(ValueError, match="via"):
    D.frequency_loss(p, p, via="fft")
  with pytest.raises(ValueError, match="same"):
    D.spatial_loss(p, jnp.zeros((1, 2, 2, 4)))


# ------------------------------------------------------------------------------ output KD


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_kl_matches_numpy(temperature):
  s, t = _rand((5, 7), 9, scale=3.0), _rand((5, 7), 10, scale=3.0)
  ref = 0.0
  for i in range(5):
    pt, ps = _np_softmax(t[i].astype(np.float64) / temperature), _np_softmax(s[i].astype(np.float64) / temperature)
    ref += np.sum(pt * (np.log(pt) - np.log(ps)))
  ref = ref / 5 * temperature ** 2  # Mean over the batch, times T^2 (Hinton's gradient-scale correction).
  np.testing.assert_allclose(float(D.kd_kl(s, t, temperature)), ref, rtol=1e-5)
  assert float(D.kd_kl(t, t, temperature)) == pytest.approx(0.0, abs=1e-6)
  # A padding mask drops examples: the masked mean equals the mean over the kept rows.
  mask = np.array([1, 0, 1, 1, 0], np.float32)
  keep = mask > 0
  np.testing.assert_allclose(float(D.kd_kl(s, t, temperature, mask=mask)),
                             float(D.kd_kl(s[keep], t[keep], temperature)), rtol=1e-5)


def test_kd_kl_does_not_train_the_teacher():
  s, t = _rand((3, 4), 11), _rand((3, 4), 12)
  gt = jax.grad(lambda t: D.kd_kl(s, t, 2.0))(t)
  assert np.all(np.asarray(gt) == 0.0)


def test_silog_matches_numpy_on_masked_example():
  rs = np.random.RandomState(13)
  pred = rs.uniform(0.5, 10.0, (2, 4, 5)).astype(np.float32)
  teach = rs.uniform(0.5, 10.0, (2, 4, 5)).astype(np.float32)
  teach[0, :2, :] = 0.0  # Invalid teacher pixels (official mask: teacher > 1e-3).
  pred[1, 3, 4] = -1.0   # Invalid prediction at a masked pixel must not give NaN.
  valid = teach > 1e-3
  valid[1, 3, 4] = False
  g = np.log(pred[valid].astype(np.float64)) - np.log(teach[valid].astype(np.float64))
  ref = 10.0 * np.sqrt(np.mean(g ** 2) - 0.85 * np.mean(g) ** 2)
  np.testing.assert_allclose(float(D.silog_loss(pred, teach, valid)), ref, rtol=1e-5)
  grad = jax.grad(lambda p: D.silog_loss(p, teach, valid))(pred)
  assert np.isfinite(np.asarray(grad)).all() and np.all(np.asarray(grad)[~valid] == 0)
  # Default mask = teacher > 1e-3.
  p2 = np.abs(pred) + 0.1
  g2 = np.log(p2[teach > 1e-3].astype(np.float64)) - np.log(teach[teach > 1e-3].astype(np.float64))
  ref2 = 10.0 * np.sqrt(np.mean(g2 ** 2) - 0.85 * np.mean(g2) ** 2)
  np.testing.assert_allclose(float(D.silog_loss(p2, teach)), ref2, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_pixel_kl_with_ignore_matches_numpy(temperature):
  rs = np.random.RandomState(14)
  s = rs.randn(2, 3, 4, 5).astype(np.float32) * 2
  pt = rs.uniform(0, 1, (2, 3, 4, 5)).astype(np.float32)
  pt[..., 0] = 0.0            # A class the teacher rules out (0·log 0 = 0).
  pt[0, 0, 0, 1] = -0.2       # Negative outputs are clamped at 0 before renormalising.
  ignore = rs.uniform(size=(2, 3, 4)) < 0.3
  ref, cnt = 0.0, 0
  for n in range(2):
    for y in range(3):
      for x in range(4):
        if ignore[n, y, x]:
          continue
        p = np.maximum(pt[n, y, x].astype(np.float64), 0)
        p = p / p.sum()
        q = _np_softmax(s[n, y, x].astype(np.float64) / temperature)
        ref += sum(p[k] * (np.log(p[k]) - np.log(q[k])) for k in range(5) if p[k] > 0)
        cnt += 1
  ref = ref / cnt * temperature ** 2
  np.testing.assert_allclose(float(D.pixel_kl(s, pt, ignore, temperature)), ref, rtol=1e-5)


def test_registry_and_total():
  assert {"spatial", "frequency", "kd_kl", "silog", "pixel_kl"} <= set(D.LOSSES)
  assert D.get_loss("spatial") is D.spatial_loss
  with pytest.raises(ValueError, match="registered"):
    D.get_loss("nope")
  with pytest.raises(ValueError, match="already registered"):
    D.register_loss("spatial")(lambda: 0)
  total, terms = D.ddkd_total(2.0, 3.0, 5.0, 7.0, kd_ratio=0.25, alpha_spatial=0.5, alpha_frequency=0.1)
  assert float(total) == pytest.approx(0.75 * 2.0 + 0.25 * 3.0 + 0.5 * 5.0 + 0.1 * 7.0)
  assert {k: float(v) for k, v in terms.items()} == pytest.approx(
      {"task": 2.0, "kd": 3.0, "spatial": 5.0, "frequency": 7.0, "total": float(total)})
  total, _ = D.ddkd_total(2.0, None, None, None, kd_ratio=0.0, alpha_spatial=1.0, alpha_frequency=1.0)
  assert float(total) == 2.0
  with pytest.raises(ValueError, match="kd_ratio"):
    D.ddkd_total(1.0, 1.0, 1.0, 1.0, kd_ratio=1.5, alpha_spatial=0.0, alpha_frequency=0.0)
  with pytest.raises(ValueError, match="alpha_frequency"):
    D.ddkd_total(1.0, 1.0, 1.0, 1.0, kd_ratio=0.5, alpha_spatial=0.0, alpha_frequency=-1.0)
  with pytest.raises(ValueError, match="kd_loss is None"):
    D.ddkd_total(1.0, None, 1.0, 1.0, kd_ratio=0.5, alpha_spatial=0.0, alpha_frequency=0.0)


# ----------------------------------------------------------------------------- projector


@pytest.mark.parametrize("student, teacher", [((1, 1), (3, 4)), ((2, 3), (2, 3)), ((5, 4), (2, 2))])
def test_projector_shapes(student, teacher):
  x = _rand((2, *student, 6), 15)
  proj = AttentionProjector(teacher, teacher_dim=16, num_heads=4)
  v = jax.eval_shape(proj.init, jax.random.key(0), x)
  y, upd = jax.eval_shape(lambda v, x: proj.apply(v, x, train=True, mutable=["batch_stats"]), v, x)
  assert y.shape == (2, *teacher, 16)
  assert v["params"]["student_pos"].shape == (1, *student, 6)
  assert v["params"]["queries"].shape == (teacher[0] * teacher[1], 16)
  assert jax.eval_shape(proj.apply, v, x).shape == (2, *teacher, 16)
  # A projector built for one student grid also runs on another (its pos-emb is resized).
  proj2 = AttentionProjector(teacher, teacher_dim=16, num_heads=4, pos_grid=(3, 3), student_dim=8)
  v2 = jax.eval_shape(proj2.init, jax.random.key(1), x)
  assert v2["params"]["student_pos"].shape == (1, 3, 3, 8)
  assert jax.eval_shape(proj2.apply, v2, x).shape == (2, *teacher, 16)


def test_projector_bad_heads():
  with pytest.raises(ValueError, match="num_heads=5 must divide teacher_dim=16"):
    AttentionProjector((2, 2), 16, num_heads=5).init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)))


def _layer_norm(x, scale, bias, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize("softmax_scale", [1.0, 5.0])
def test_projector_attention_matches_numpy(softmax_scale):
  # Constructed input: teacher 2x3 grid, student 3x2 grid, 2 heads of dim 4. From the sown student
  # tokens and query embeddings, numpy recomputes q/k/v, the scaled softmax and the whole tail.
  nh, ct = 2, 8
  x = _rand((2, 3, 2, 5), 16, scale=2.0)
  proj = AttentionProjector((2, 3), teacher_dim=ct, num_heads=nh, softmax_scale=softmax_scale)
  v = jax.jit(proj.init)(jax.random.key(3), x)
  # Constructed weights: with the 0.02 init every attention map is nearly uniform, which would hide
  # a wrong scale; unit-variance queries and q/k maps give O(1) logits.
  params = dict(v["params"])
  rs = np.random.RandomState(0)
  params["queries"] = rs.randn(*params["queries"].shape).astype(np.float32)
  for name in ("q", "k", "query_proj"):
    params[name] = {**params[name], "kernel": rs.randn(*params[name]["kernel"].shape).astype(np.float32)}
  v = {**v, "params": params}
  y, inter = jax.jit(lambda v, x: proj.apply(v, x, mutable=["intermediates"]))(v, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
  tok = np.asarray(inter["intermediates"]["student_tokens"][0], np.float64)    # (B, Ls, Cs)
  qe = np.asarray(inter["intermediates"]["query_embed"][0], np.float64)        # (Lt, Ct)
  np.testing.assert_allclose(qe, np.maximum(p["queries"] @ p["query_proj"]["kernel"] + p["query_proj"]["bias"], 0),
                             rtol=1e-5, atol=1e-6)
  hd = ct // nh
  lin = lambda a, name: a @ p[name]["kernel"] + p[name]["bias"]
  q = lin(qe, "q").reshape(6, nh, hd)
  k = lin(tok, "k").reshape(2, 6, nh, hd)
  val = lin(tok, "v").reshape(2, 6, nh, hd)
  attn_ref = np.zeros((2, nh, 6, 6))
  for b in range(2):
    for h in range(nh):
      logits = q[:, h] @ k[b, :, h].T * hd ** -0.5 * softmax_scale
      attn_ref[b, h] = _np_softmax(logits)
  attn = np.asarray(inter["intermediates"]["attention"][0])
  assert attn.max() > 0.5  # Far from uniform (1/6): the scale matters in this example.
  np.testing.assert_allclose(attn, attn_ref, rtol=1e-4, atol=1e-6)
  out = np.einsum("bhlm,bmhd->blhd", attn_ref, val).reshape(2, 6, ct)
  out = lin(out, "out")
  yn = _layer_norm(out, p["norm"]["scale"], p["norm"]["bias"])
  ref = yn + lin(np.maximum(lin(yn, "ffn_in"), 0), "ffn_out")   # FFN + identity of its normalised input.
  np.testing.assert_allclose(np.asarray(y), ref.reshape(2, 2, 3, ct), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("student", [(1, 1)])
def test_projector_gradients_finite(student):
  x = _rand((2, *student, 4), 17)
  t = _rand((2, 3, 3, 8), 18)
  proj = AttentionProjector((3, 3), teacher_dim=8, num_heads=2)
  v = jax.jit(proj.init)(jax.random.key(0), x)

  def loss(params, x):
    y, _ = proj.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"])
    return D.spatial_loss(y, t) + D.frequency_loss(y, t)

  gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], x)
  leaves = jax.tree.leaves(gp) + [gx]
  assert all(np.isfinite(np.asarray(a)).all() for a in leaves)
  y = jax.jit(proj.apply)(v, x)
  assert y.shape == (2, 3, 3, 8) and np.isfinite(np.asarray(y)).all()
  assert sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(gp)) > 0
