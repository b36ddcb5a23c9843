"""Dense heads: PyTorch-semantics ops and the Spatial-Mamba / StripPooling modules against naive
numpy references; DenseEvoNet masked == sliced == standalone; train mode, SyncBN under
shard_map; costs against the analytic backbone count."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.nn.cost import arch_cost
from evonas_jax.nn.dense import (DenseEvoNet, decoder_cost, dense_cost, dense_sliced_apply,
                                 dense_subnet_model, extract_dense_subnet, init_dense_model)
from evonas_jax.nn.heads import (SASSM, SpatialMambaBlock, StripPooling, get_head,
                                 replicate_dwconv, scan_hidden_states)
from evonas_jax.nn.heads.ops import adaptive_avg_pool, pixel_shuffle, resize_bilinear
from evonas_jax.space import arch_masks, get_space

IMAGE = (32, 64, 3)          # non-square: catches H/W swaps; stride 32 -> 1 x 2
K = 5
SEG_CFG = {"fpn_channels": 16, "aux_channels": 8, "dropout": 0.0}
HEAD_CFGS = {"depth": {}, "segmentation": SEG_CFG}


def _noise(seed):
  """Gaussian noise from numpy (per-leaf jax.random calls would compile once per leaf shape)."""
  rng = np.random.default_rng(seed)
  return lambda shape: rng.normal(size=shape).astype(np.float32)


def _perturb(tree, seed, scale=0.05):
  noise = _noise(seed)
  return jax.tree.map(lambda x: np.asarray(x) + scale * noise(x.shape), tree)


# ------------------------------------------------------------------ numpy references
def np_conv(x, k, bias=None, depthwise=False):
  """Zero-padded (k//2) stride-1 conv; x (B,H,W,Cin), k (kh,kw,cin|1,cout)."""
  kh, kw = k.shape[:2]
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i:i + h, j:j + w, :]
      out = out + (patch * k[i, j, 0] if depthwise else patch @ k[i, j])
  return out if bias is None else out + bias


def np_ln(x, p, eps=1e-5):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * p["scale"] + p["bias"]


def np_softplus(x):
  return np.log1p(np.exp(x))


def np_silu(x):
  return x / (1 + np.exp(-x))


def np_recurrence(u, dt, a, b):
  """h_t = exp(dt_t a) h_{t-1} + dt_t b_t u_t; u, dt (B, L, d), a (d,), b (B, L)."""
  h = np.zeros((u.shape[0], u.shape[2]))
  out = np.zeros_like(u)
  for t in range(u.shape[1]):
    h = np.exp(dt[:, t] * a) * h + dt[:, t] * b[:, t, None] * u[:, t]
    out[:, t] = h
  return out


def np_replicate_dwconv(x, k, dil):
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (dil, dil), (dil, dil), (0, 0)), mode="edge")
  out = 0.0
  for i in range(3):
    for j in range(3):
      out = out + xp[:, i * dil:i * dil + h, j * dil:j * dil + w] * k[i, j, 0]
  return out


def np_sassm(p, x):
  """The structure-aware SSM mixer written out from its description (module docstring)."""
  b, hh, ww, c = x.shape
  d, r = 2 * c, math.ceil(c / 16)
  xz = x @ p["in_proj"]["kernel"]
  xs, z = xz[..., :d], xz[..., d:]
  xs = np_silu(np_conv(xs, p["conv"]["kernel"], p["conv"]["bias"], depthwise=True))
  dbc = xs @ p["x_proj"]["kernel"]
  dt = np_softplus(dbc[..., :r] @ p["dt_proj"]["kernel"] + p["dt_bias"])
  bt, ct = dbc[..., r], dbc[..., r + 1:r + 2]
  h = np_recurrence(xs.reshape(b, -1, d), dt.reshape(b, -1, d), -np.exp(p["A_log"]),
                    bt.reshape(b, -1)).reshape(b, hh, ww, d)
  f = p["fusion"]
  h = sum(f["alpha"][i] * np_replicate_dwconv(h, f[f"kernel_d{dl}"], dl)
          for i, dl in enumerate((1, 3, 5)))
  y = np_ln(h * ct + xs * p["D"], p["out_norm"]) * np_silu(z)
  return y @ p["out_proj"]["kernel"]


def np_bn(x, p, s, eps=1e-5):
  return (x - s["mean"]) / np.sqrt(s["var"] + eps) * p["scale"] + p["bias"]


def np_adaptive_pool(x, oh, ow):
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c))
  for i in range(oh):
    h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
    for j in range(ow):
      w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
      out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


def np_bilinear_ac(x, oh, ow):
  """align_corners=True bilinear, pointwise."""
  b, h, w, c = x.shape
  out = np.zeros((b, oh, ow, c))
  for i in range(oh):
    sy = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
    y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); ly = sy - y0
    for j in range(ow):
      sx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
      x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); lx = sx - x0
      out[:, i, j] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                      + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
  return out


def np_strip_pooling(p, s, x, pools):
  def cbr(name, t, relu):
    y = np_bn(np_conv(t, p[name]["conv"]["kernel"]), p[name]["bn"], s[name]["bn"])
    return np.maximum(y, 0) if relu else y
  h, w = x.shape[1:3]
  x1, x2 = cbr("conv1_1", x, True), cbr("conv1_2", x, True)
  p0 = cbr("conv2_0", x1, False)
  p1 = np_bilinear_ac(cbr("conv2_1", np_adaptive_pool(x1, pools[0], pools[0]), False), h, w)
  p2 = np_bilinear_ac(cbr("conv2_2", np_adaptive_pool(x1, pools[1], pools[1]), False), h, w)
  sw = cbr("conv2_3", x2.mean(axis=1, keepdims=True), False)     # (B, 1, W, c)
  sh = cbr("conv2_4", x2.mean(axis=2, keepdims=True), False)     # (B, H, 1, c)
  y1 = cbr("conv2_5", np.maximum(p0 + p1 + p2, 0), True)
  y2 = cbr("conv2_6", np.maximum(sw + sh, 0), True)
  return np.maximum(x + cbr("conv3", np.concatenate([y1, y2], -1), False), 0)


# ------------------------------------------------------------------ ops
def test_pixel_shuffle_matches_torch_order():
  r, c, h, w = 2, 3, 2, 5
  x = np.random.default_rng(0).normal(size=(2, h, w, c * r * r)).astype(np.float32)
  ref = np.zeros((2, h * r, w * r, c), np.float32)
  for cc in range(c):
    for i in range(r):
      for j in range(r):
        ref[:, i::r, j::r, cc] = x[:, :, :, cc * r * r + i * r + j]
  np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), r)), ref)


def test_adaptive_pool_and_bilinear_match_pytorch_semantics():
  x = np.random.default_rng(1).normal(size=(2, 5, 7, 3)).astype(np.float32)
  for oh, ow in [(3, 4), (20, 12), (1, 7), (5, 1)]:   # shrink, grow (overlapping bins), strips
    np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), (oh, ow)),
                               np_adaptive_pool(x, oh, ow), atol=1e-5)
  # align_corners=False upsampling == jax.image.resize (half-pixel, no antialias)
  np.testing.assert_allclose(resize_bilinear(jnp.asarray(x), (20, 28)),
                             jax.image.resize(x, (2, 20, 28, 3), "bilinear", antialias=False),
                             atol=1e-5)
  np.testing.assert_allclose(resize_bilinear(jnp.asarray(x), (11, 3), align_corners=True),
                             np_bilinear_ac(x, 11, 3), atol=1e-5)
  # closed form: align_corners=True keeps a linear ramp exactly linear, corners included
  ramp = np.arange(5, dtype=np.float32)[None, :, None, None] * np.ones((1, 5, 2, 1), np.float32)
  out = np.asarray(resize_bilinear(jnp.asarray(ramp), (9, 2), align_corners=True))[0, :, 0, 0]
  np.testing.assert_allclose(out, np.arange(9) * 4 / 8, atol=1e-6)


# ------------------------------------------------------------------ Spatial-Mamba
def test_scan_hidden_states_is_the_recurrence():
  rng = np.random.default_rng(2)
  b, L, d = 2, 13, 6
  u, delta = rng.normal(size=(b, L, d)), rng.normal(size=(b, L, d))
  a, bb, bias = -rng.uniform(0.5, 2, d), rng.normal(size=(b, L)), rng.normal(size=d)
  f32 = lambda t: jnp.asarray(t, jnp.float32)
  h = scan_hidden_states(f32(u), f32(delta), f32(a), f32(bb), f32(bias), backend="reference")
  ref = np_recurrence(u, np_softplus(delta + bias), a, bb)
  np.testing.assert_allclose(np.asarray(h), ref, rtol=1e-5, atol=1e-5)


def test_replicate_padded_dilated_conv():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 7, 9, 4)).astype(np.float32)
  k = rng.normal(size=(3, 3, 1, 4)).astype(np.float32)
  for dil in (1, 3, 5):     # dilation 5 > H/2: the edge padding is used for most taps
    np.testing.assert_allclose(replicate_dwconv(jnp.asarray(x), jnp.asarray(k), dil),
                               np_replicate_dwconv(x, k, dil), rtol=1e-5, atol=1e-5)


def test_sassm_matches_numpy_reference_and_block_param_count():
  c = 24                                                  # dt_rank = ceil(24/16) = 2
  x = jax.random.normal(jax.random.key(0), (2, 4, 5, c))
  m = SASSM(scan_backend="reference")
  p = _perturb(m.init(jax.random.key(1), x)["params"], 2, 0.1)
  p = jax.tree.map(np.asarray, p)
  np.testing.assert_allclose(np.asarray(m.apply({"params": p}, x)),
                             np_sassm(p, np.asarray(x, np.float64)), rtol=1e-4, atol=1e-4)
  # initial values from the description: A = -1, D = 1, fusion kernels and alphas 1
  p0 = m.init(jax.random.key(1), x)["params"]
  assert np.all(np.asarray(p0["A_log"]) == 0) and np.all(np.asarray(p0["D"]) == 1)
  assert np.all(np.asarray(p0["fusion"]["kernel_d3"]) == 1)
  assert np.all(np.asarray(p0["fusion"]["alpha"]) == 1)
  # closed-form parameter count of the whole block (mlp ratio 4, d = 2C, r = dt_rank)
  bp = SpatialMambaBlock(4.0).init(jax.random.key(3), x)["params"]
  d, r = 2 * c, 2
  expected = (2 * 10 * c + 4 * c + (c * 4 * c + 4 * c + 4 * c * c + c)            # cpe, LN, MLP
              + c * 2 * d + 10 * d + d * (r + 2) + r * d + 3 * d + 3 + 27 * d + 2 * d + d * c)
  assert sum(v.size for v in jax.tree.leaves(bp)) == expected


def test_strip_pooling_matches_numpy_reference():
  x = jax.random.normal(jax.random.key(4), (2, 3, 5, 16))
  m = StripPooling((4, 2))
  v = m.init(jax.random.key(5), x)
  v = {"params": _perturb(v["params"], 6, 0.1),
       "batch_stats": jax.tree.map(lambda s: s + 0.2, v["batch_stats"])}
  v = jax.tree.map(np.asarray, v)
  np.testing.assert_allclose(np.asarray(m.apply(v, x)),
                             np_strip_pooling(v["params"], v["batch_stats"],
                                              np.asarray(x, np.float64), (4, 2)),
                             rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ DenseEvoNet
def _random_variables(model, x, seed, scale=0.05):
  """Variables of `model` without running its init (no compile): shapes from eval_shape, values
  init-like plus noise (norm/BN scales and variances, fusion kernels/alphas and D near 1)."""
  return _random_variables_fn(functools.partial(model.init, train=False), x, seed, scale)


def _random_variables_fn(init, x, seed, scale=0.05):
  shapes = jax.eval_shape(init, jax.random.key(0), x)
  leaves, td = jax.tree_util.tree_flatten_with_path(shapes)
  noise, out = _noise(seed), []
  for path, leaf in leaves:
    name = str(getattr(path[-1], "key", path[-1]))
    base = 1.0 if name in ("scale", "var", "alpha", "D") or name.startswith("kernel_d") else 0.0
    out.append(base + scale * noise(leaf.shape))
  return jax.tree_util.tree_unflatten(td, out)


@functools.lru_cache(maxsize=None)
def _setup(head):
  """Depth: the real `init_dense_model` (then perturbed). Segmentation: the depth model's
  backbone + a randomly filled head (saves a second ~10-20 s init compile)."""
  space = get_space("evonas", "tiny")
  x = jax.random.normal(jax.random.key(2), (2, *IMAGE))
  from evonas_jax.nn.supernet import EvoNet, supernet_spec
  if head == "depth":
    # init_dense_model's own path (shell init + assembly), with the backbone passed in: the
    # backbone's per-stage init (init_variables) is covered by tests/test_supernet.py and
    # costs ~15 s of compile here.
    bb = _random_variables(EvoNet(supernet_spec(space), 0, classifier=False), x, 4)
    bb = {"params": {**bb["params"], "head": None, "norm": None}, "batch_stats": bb["batch_stats"]}
    model, v = init_dense_model(space, head, HEAD_CFGS[head], K, 10.0, jax.random.key(0), IMAGE,
                                backbone_variables=bb)
    ref = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    assert jax.tree.map(lambda a: a.shape, v) == jax.tree.map(lambda a: a.shape, ref)
    return space, model, {**v, "params": _perturb(v["params"], 1)}, x
  _, _, dv, _ = _setup("depth")
  model = DenseEvoNet(supernet_spec(space), head, HEAD_CFGS[head], K, 10.0)
  v = _random_variables(model, x, 3)
  v = {c: {**v[c], "backbone": dv[c]["backbone"]} for c in ("params", "batch_stats")}
  return space, model, v, x


def _f64(tree):
  return jax.tree.map(lambda t: jnp.asarray(t, jnp.float64), tree)


@pytest.mark.parametrize("head", ["depth", "segmentation"])
def test_masked_sliced_standalone_agree(head):
  """Run in float64: the decoder (27-tap fusion kernels, train-free BN, sigmoid) amplifies the
  backbone's fp32 rounding (~3e-6 on the features) to ~1e-5 on the outputs, so an fp32 check at
  1e-5 sits on the rounding noise; in float64 the modes agree to ~1e-14 (the scan state stays
  fp32 by design; an input 1 ulp apart there would show as ~1e-7)."""
  from hand_slice import fill_standalone
  space, model, v, x = _setup(head)
  rand = space.decode(space.sample(7, num=1)[0])
  # Compile time: sliced mode compiles per arch. The decoder is arch-independent, so the
  # segmentation head checks one random arch, the depth head a random one (plus the standalone
  # network, on extracted and on hand-copied params) and the smallest.
  archs = [rand, space.smallest()] if head == "depth" else [rand]
  kw = dict(head=head, head_cfg=HEAD_CFGS[head], num_classes=K, max_depth=10.0)
  with jax.enable_x64(True):
    v, x = _f64(v), _f64(x)
    masked = jax.jit(lambda v, x, m: model.apply(v, x, m, return_features=True))
    for arch in archs:
      a = masked(v, x, arch_masks(space, arch))
      feats = a.pop("features")
      assert a[next(iter(a))].dtype == jnp.float64
      outs = {"sliced": dense_sliced_apply(kw, space, arch)(v, x)}
      if head == "depth" and arch == rand:   # a DenseEvoNet of the subnet spec, extracted vars
        sub_v = jax.tree.map(np.asarray, extract_dense_subnet(v, space, arch))
        blocks = [k for k in sub_v["params"]["backbone"] if k.startswith("stage")]
        assert len(blocks) == sum(arch.depth_counts)
        net = dense_subnet_model(space, arch, **kw)
        run = jax.jit(net.apply)
        outs["standalone"] = run(sub_v, x)
        # Independent of extract_dense_subnet: the small module's own init tree (eval_shape:
        # every leaf is overwritten, so only its names and shapes matter; a real init costs a
        # ~10-20 s compile) filled with supernet slices copied by hand (tests/hand_slice.py).
        fresh = jax.eval_shape(functools.partial(net.init, train=False), jax.random.key(9), x)
        outs["standalone_hand_copied"] = run(fill_standalone(fresh, v, space, arch, "backbone"),
                                             x)
      errs = {}
      for mode, b in outs.items():
        assert set(a) == set(b)
        for key in a:
          assert np.isfinite(np.asarray(a[key])).all()
          errs[f"{mode} {key}"] = float(jnp.abs(a[key] - b[key]).max())
      assert max(errs.values()) <= 1e-8, f"{head} {arch.short()}: max abs diff to masked {errs}"
      assert [f.shape for f in feats] == [(2, 8, 16, 16), (2, 4, 8, 32), (2, 2, 4, 64),
                                          (2, 1, 2, 128)]
      if head == "depth":
        d = np.asarray(a["depth"]) / 10.0
        assert d.shape == (2, *IMAGE[:2]) and d.min() > 0 and d.max() < 1.0 and d.std() > 1e-3
      else:
        assert a["logits"].shape == a["aux_logits"].shape == (2, *IMAGE[:2], K)
        assert float(jnp.abs(a["logits"]).max()) > 1e-2


def _small(head):
  """The smallest arch's standalone model (cheap to compile) with perturbed weights."""
  space, _, v, x = _setup(head)
  arch = space.smallest()
  net = dense_subnet_model(space, arch, head, HEAD_CFGS[head], K, 10.0)
  return space, arch, net, extract_dense_subnet(v, space, arch), x


def test_train_step_grads_finite_and_batch_stats_update():
  space, arch, net, v, x = _small("segmentation")
  y = jnp.asarray(np.arange(np.prod(x.shape[:3])).reshape(x.shape[:3]) % K)

  def loss(p):
    out, upd = net.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
    ce = lambda lg: -jnp.take_along_axis(jax.nn.log_softmax(lg), y[..., None], -1).mean()
    return ce(out["logits"]) + 0.4 * ce(out["aux_logits"]), upd

  (l, upd), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
  flat = lambda t: np.concatenate([np.asarray(a).ravel() for a in jax.tree.leaves(t)])
  assert np.isfinite(float(l)) and np.isfinite(flat(g)).all()
  for part in ("backbone", "decoder", "outnorm3"):   # the gradient reaches every part
    assert np.abs(flat(g[part])).max() > 0
  # train-mode BN moved the decoder's and the backbone's running statistics
  for part in ("backbone", "decoder"):
    assert not np.allclose(flat(upd["batch_stats"][part]), flat(v["batch_stats"][part]))


def test_sync_bn_under_shard_map_equals_global_batch():
  """Train-mode forward (batch statistics, running-stat update): shard_map over 2 devices with
  bn_axis_name equals the 1-device forward on the global batch."""
  from jax.sharding import NamedSharding, PartitionSpec as P

  from evonas_jax.parallel import make_data_mesh
  space, arch, _, v, x = _small("depth")
  x = jnp.concatenate([x, x[:, ::-1] * 0.5])        # 4 images: 2 per device
  kw = dict(head="depth", head_cfg={}, num_classes=K, max_depth=10.0)
  fwd = lambda net: lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"])
  mesh = make_data_mesh(2)
  # check_vma=False: the reference scan's zero initial carry is device-invariant while its body
  # output varies, which check_vma rejects (kernels/scan_reference.py; fix reported).
  synced = dense_subnet_model(space, arch, bn_axis_name="data", **kw)
  sharded = jax.jit(jax.shard_map(fwd(synced), mesh=mesh, check_vma=False,
                                  in_specs=(P(), P("data")), out_specs=(P("data"), P())))
  with jax.enable_x64(True):     # float64: see test_masked_sliced_standalone_agree
    v, x = _f64(v), _f64(x)
    out_s, st_s = sharded(v, jax.device_put(x, NamedSharding(mesh, P("data"))))
    out_g, st_g = jax.jit(fwd(dense_subnet_model(space, arch, **kw)))(v, x)
  assert out_s["depth"].dtype == jnp.float64
  # (per-device statistics differ from the global ones: the two halves of x differ in scale)
  np.testing.assert_allclose(out_s["depth"], out_g["depth"], atol=1e-8, rtol=0)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-8, atol=1e-10), st_s, st_g)


def test_costs_match_analytic_backbone_plus_decoder():
  space, arch, net, v, _ = _small("depth")
  total, dec = dense_cost(net, v, IMAGE), decoder_cost(net, v, IMAGE)
  backbone = arch_cost(space, arch, IMAGE, num_classes=1, count_padding=False)
  # arch_cost includes a (dims[-1] x num_classes) classifier that DenseEvoNet does not have
  assert total["macs"] == backbone.matmul_macs - space.dims[-1] + dec["macs"]
  assert total["params"] == sum(x.size for x in jax.tree.leaves(v["params"]))
  assert dec["params"] == total["params"] - sum(x.size for x in
                                                jax.tree.leaves(v["params"]["backbone"]))
  assert dec["macs"] > 0 and total["xla_flops"] > 2 * dec["macs"] * 0.5


def test_mamba_fpn_pyramid_levels_for_detection():
  """P2..P5 at 256 (detection default) on strides 4..32, P6 = max_pool(kernel 1, stride 2) of P5;
  the pre-output maps e0..e3 keep the backbone widths (shapes: eval_shape, no compile). P6's
  values: a small MambaFPN's real output against a naive max-pool loop."""
  from evonas_jax.nn.heads import MambaFPN
  feats = [jnp.zeros((2, 32 // 2 ** s, 40 // 2 ** s, 8 * 2 ** s)) for s in range(4)]  # 4x5 at s3
  fpn = MambaFPN()
  v = jax.eval_shape(fpn.init, jax.random.key(0), feats)
  pyr, levels = jax.eval_shape(functools.partial(fpn.apply, return_levels=True), v, feats)
  assert [p.shape for p in pyr] == [(2, 32, 40, 256), (2, 16, 20, 256), (2, 8, 10, 256),
                                    (2, 4, 5, 256), (2, 2, 3, 256)]
  assert [e.shape for e in levels] == [f.shape for f in feats]
  # P6 of the module's real output vs PyTorch's max_pool2d(P5, kernel_size=1, stride=2) written
  # as a loop (output size floor((h - 1) / 2) + 1, each window the single pixel (2i, 2j)). A
  # 3 x 5 P5 (odd sizes: the last row / column is kept) at a small width keeps the compile short.
  small = MambaFPN(out_channels=8, mlp_ratio=1.0, pool_sizes=(2, 2), scan_backend="reference")
  feats = [jnp.asarray(_noise(10 + s)((1, 24 // 2 ** s, 40 // 2 ** s, 4 * 2 ** s)))
           for s in range(4)]
  v = _random_variables_fn(small.init, feats, seed=11)
  pyr = jax.jit(small.apply)(v, feats)
  p5, p6 = np.asarray(pyr[3]), np.asarray(pyr[4])
  assert p5.shape == (1, 3, 5, 8) and np.std(p5) > 1e-3
  ref = np.zeros((1, (3 - 1) // 2 + 1, (5 - 1) // 2 + 1, 8), np.float32)
  for i in range(ref.shape[1]):
    for j in range(ref.shape[2]):
      ref[:, i, j] = p5[:, 2 * i:2 * i + 1, 2 * j:2 * j + 1].max(axis=(1, 2))
  np.testing.assert_array_equal(p6, ref)


def test_registry_errors_name_allowed_values():
  with pytest.raises(ValueError, match=r"unknown head 'detection'.*depth.*segmentation"):
    get_head("detection")
  with pytest.raises(ValueError, match=r"unknown config keys \['fpn_chanels'\].*fpn_channels"):
    get_head("segmentation", fpn_chanels=8)
  space = get_space("evonas", "tiny")
  with pytest.raises(ValueError, match="multiples of 32"):
    init_dense_model(space, "depth", {}, K, 10.0, jax.random.key(0), (28, 28, 3))
  with pytest.raises(ValueError, match="neck 'ppm' not in"):
    init_dense_model(space, "depth", {"neck": "ppm"}, K, 10.0, jax.random.key(0), (32, 32, 3))
