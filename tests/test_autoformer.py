"""AutoFormer spaces (counts, encodings, cost vs an independent path), the masked ViT vs a
standalone ViT of the decoded arch, proxies on AutoFormer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.nn.autoformer import autoformer_proxy_model, init_autoformer, masked_layernorm
from evonas_jax.proxies import get_proxy
from evonas_jax.space.autoformer import AutoFormerSpace


def test_space_sizes_and_roundtrip():
  s = AutoFormerSpace("S")
  assert s.size() == 3 * sum(9 ** d for d in (12, 13, 14))  # research §4.1: ~7.7e13
  assert 7.6e13 < s.size() < 7.8e13
  g = s.sample(0, 20)
  for row in g:
    a = s.decode(row)
    assert a.embed_dim in (320, 384, 448) and a.depth in (12, 13, 14)
    assert (s.decode(s.encode(a)) == a)
  with pytest.raises(ValueError, match="gene 'depth'"):
    s.validate(np.r_[0, 3, np.zeros(28, int)])
  with pytest.raises(ValueError, match="must be one of"):
    AutoFormerSpace("XL")


def test_cost_masks_equal_python_reference():
  for name in ("T", "S", "B"):
    s = AutoFormerSpace(name)
    g = s.sample(1, 8)
    c = jax.vmap(s.cost)(s.genome_to_masks(g))
    for i, row in enumerate(g):
      ref = s.arch_cost(s.decode(row))
      assert float(c["params"][i]) == pytest.approx(ref["params"], rel=1e-6)
      assert float(c["macs"][i]) == pytest.approx(ref["macs"], rel=1e-6)
  # Smallest AutoFormer-S by hand: e=320, 12 blocks, ratio 3 (h=960), 5 heads (qkv 320).
  s = AutoFormerSpace("S")
  block = 4 * 320 + (320 * 960 + 960) + (320 * 320 + 320) + (320 * 960 + 960) + (960 * 320 + 320)
  smallest = 12 * block + (768 * 320 + 320) + 197 * 320 + 320 + 2 * 320 + 320 * 1000 + 1000
  assert s.arch_cost(s.decode(s.smallest()))["params"] == smallest
  # Largest: L-SWAG quotes 15-35 M params for its AutoFormer-S ViTs.
  assert 30e6 < s.arch_cost(s.decode(s.largest()))["params"] < 35e6


SP = AutoFormerSpace("T", image_size=16, patch_size=8, num_classes=4, width_div=24)


def _standalone(params, arch, x):
  """Independent forward of the decoded arch: weights sliced to the active widths, no masks."""
  e, sp = arch.embed_dim, SP
  d = sp.qkv_per_head
  k = params["patch"]["kernel"][..., :e]
  y = jax.lax.conv_general_dilated(x, k, (8, 8), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = y + params["patch"]["bias"][:e]
  b = x.shape[0]
  y = y.reshape(b, -1, e)
  y = jnp.concatenate([jnp.broadcast_to(params["cls"][..., :e], (b, 1, e)), y], 1)
  y = y + params["pos"][..., :e]

  def ln(z, p):
    mu, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
    return (z - mu) / jnp.sqrt(var + 1e-6) * p["scale"][:e] + p["bias"][:e]

  for i in range(arch.depth):
    P = jax.tree.map(lambda t: t[i], params["blocks"])
    nh, hid = arch.num_heads[i], int(round(arch.mlp_ratios[i] * e))
    qkv_w = P["qkv"]["kernel"][:e].reshape(e, 3, sp.max_heads, d)[:, :, :nh].reshape(e, -1)
    qkv_b = P["qkv"]["bias"].reshape(3, sp.max_heads, d)[:, :nh].reshape(-1)
    z = ln(y, P["ln1"]) @ qkv_w + qkv_b
    q, kk, v = jnp.split(z.reshape(b, -1, 3, nh, d), 3, axis=2)
    a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q[:, :, 0], kk[:, :, 0]) / np.sqrt(d), -1)
    o = jnp.einsum("bhqk,bkhd->bqhd", a, v[:, :, 0]).reshape(b, -1, nh * d)
    y = y + o @ P["proj"]["kernel"][:nh * d, :e] + P["proj"]["bias"][:e]
    h = jax.nn.gelu(ln(y, P["ln2"]) @ P["fc1"]["kernel"][:e, :hid] + P["fc1"]["bias"][:hid],
                    approximate=False)
    y = y + h @ P["fc2"]["kernel"][:hid, :e] + P["fc2"]["bias"][:e]
  return ln(y[:, 0], params["norm"]) @ params["head"]["kernel"][:e] + params["head"]["bias"]


def test_masked_vit_equals_standalone_and_vmap():
  model, v = init_autoformer(SP, jax.random.key(0))
  params = v["params"]
  x = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  g = SP.sample(5, 3)
  f = jax.jit(jax.vmap(lambda m: model.apply(v, x, m)))
  out = f(SP.genome_to_masks(g))
  for i, row in enumerate(g):
    ref = _standalone(params, SP.decode(row), x)
    np.testing.assert_allclose(out[i], ref, rtol=2e-4, atol=2e-5)


def test_masked_layernorm_matches_plain_on_active_dims():
  x = jax.random.normal(jax.random.key(0), (2, 7))
  em = jnp.array([1, 1, 1, 1, 0, 0, 0.])
  y = masked_layernorm(x * em, em, jnp.ones(7), jnp.zeros(7))
  z = x[:, :4]
  ref = (z - z.mean(-1, keepdims=True)) / jnp.sqrt(z.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(y[:, :4], ref, rtol=1e-5, atol=1e-6)
  assert (y[:, 4:] == 0).all()


def test_proxies_on_autoformer_vmap_equals_loop():
  model, v = init_autoformer(SP, jax.random.key(0))
  pm = autoformer_proxy_model(SP)
  batch = {"image": jax.random.normal(jax.random.key(1), (4, 16, 16, 3)),
           "label": jnp.arange(4) % 4}
  g = SP.sample(2, 2)
  masks = SP.genome_to_masks(g)
  for name in ("lswag", "params"):
    fn = get_proxy(name)
    one = jax.jit(lambda m: fn(pm, v["params"], m, batch, jax.random.key(0)))
    many = jax.jit(jax.vmap(lambda m: fn(pm, v["params"], m, batch, jax.random.key(0))))(masks)
    for i in range(2):
      assert np.isfinite(float(many[i]))
      np.testing.assert_allclose(float(many[i]), float(one(jax.tree.map(lambda t: t[i], masks))),
                                 rtol=1e-4)
  assert float(get_proxy("params")(pm, v["params"], jax.tree.map(lambda t: t[0], masks), batch,
                                   None)) == SP.arch_cost(SP.decode(g[0]))["params"]
