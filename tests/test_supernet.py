"""The central invariant: masked == sliced == standalone, exact zero grads outside the arch,
vmap over archs == loop, and the mixers against independent naive references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evonas_jax.nn import extract_subnet, init_supernet, sliced_apply, subnet_model
from evonas_jax.space import arch_masks, get_space, stack_masks

NUM_CLASSES = 10
IMAGE = (28, 28, 1)
N_ARCHS = 20


def _perturb(variables, key, scale=0.05):
  """Init weights are small (std 0.02); add noise so any leak through a mask is visible."""
  leaves, tree = jax.tree.flatten(variables["params"])
  keys = jax.random.split(key, len(leaves))
  noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  return {**variables, "params": jax.tree.unflatten(tree, noisy)}


@functools.lru_cache(maxsize=None)
def _setup(name):
  space = get_space(name, "tiny")
  model, v = init_supernet(space, NUM_CLASSES, jax.random.key(0), IMAGE)
  v = _perturb(v, jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (4, *IMAGE))
  masked = jax.jit(lambda v, x, m: model.apply(v, x, m))
  return space, model, v, x, masked


def _archs(space, n, seed=10):
  archs = [space.largest(), space.smallest()]
  archs += [space.decode(g) for g in space.sample(seed, num=n - 2)]
  return archs


@pytest.mark.parametrize("name", ["evonas", "hybrid"])
def test_masked_sliced_standalone_agree(name):
  """Masked mode == sliced mode == the standalone network run on extract_subnet's params ==
  the standalone network run on an independent tree: its own init's structure
  (jax.eval_shape(net.init): names and shapes from the small module itself) with every leaf
  copied from the supernet by hand (tests/hand_slice.py: explicit index arithmetic from the
  documented layouts, none of extract_subnet / slice_params)."""
  from hand_slice import fill_standalone
  space, model, v, x, masked = _setup(name)
  worst, types = 0.0, set()
  for i, arch in enumerate(_archs(space, N_ARCHS)):
    a = masked(v, x, arch_masks(space, arch))
    b = sliced_apply({"num_classes": NUM_CLASSES}, space, arch)(v, x)
    standalone_vars = jax.tree.map(np.asarray, extract_subnet(v, space, arch))
    net = subnet_model(space, arch, NUM_CLASSES)
    run = jax.jit(net.apply)     # one compile: both trees have the same structure and shapes
    c = run(standalone_vars, x)
    d = c
    if i < 8:   # largest, smallest, 6 random (~0.3 s each: the init's trace + numpy slicing)
      hand = fill_standalone(jax.eval_shape(net.init, jax.random.key(7), x), v, space, arch)
      d = run(hand, x)
      types |= set(arch.block_type)
    # The standalone tree really is the small network: it has exactly the arch's blocks.
    blocks = {k for k in standalone_vars["params"] if k.startswith("stage")}
    assert len(blocks) == sum(arch.depth_counts)
    assert np.isfinite(np.asarray(a)).all() and float(jnp.abs(a).max()) > 0.1
    errs = {"sliced": float(jnp.abs(a - b).max()), "standalone": float(jnp.abs(a - c).max()),
            "hand-copied standalone": float(jnp.abs(a - d).max())}
    worst = max(worst, *errs.values())
    assert max(errs.values()) < 1e-5, f"{arch.short()}: max abs diff to masked {errs}"
  # The hand-copied leg saw every mixer layout of the space (checked: archs 4-7 of the hybrid
  # space hold ss2d).
  assert types == ({"vssd", "ss2d", "attention"} if name == "hybrid" else {"vssd", "attention"})
  print(f"{name}: worst masked/sliced/standalone diff over {N_ARCHS} archs: {worst:.2e}")


def _ids_like(params):
  """Each scalar of the tree gets a unique integer id (to see which ones a subnet uses)."""
  leaves, tree = jax.tree.flatten(params)
  out, start = [], 0
  for x in leaves:
    out.append(np.arange(start, start + x.size, dtype=np.int64).reshape(x.shape))
    start += x.size
  return jax.tree.unflatten(tree, out)


@pytest.mark.parametrize("name", ["evonas", "hybrid"])
def test_masked_gradients_zero_outside_and_equal_standalone_inside(name):
  space, model, v, x, _ = _setup(name)
  y = jnp.arange(x.shape[0]) % NUM_CLASSES

  def ce(logits):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  grad_masked = jax.jit(jax.grad(lambda p, m: ce(model.apply({**v, "params": p}, x, m))))
  ids = _ids_like(v["params"])
  for arch in _archs(space, 4, seed=99)[1:]:   # not the largest: it has no "outside"
    gm = grad_masked(v["params"], arch_masks(space, arch))
    net = subnet_model(space, arch, NUM_CLASSES)
    sub_v = extract_subnet(v, space, arch)
    gs = jax.grad(lambda p: ce(net.apply({**sub_v, "params": p}, x)))(sub_v["params"])
    sub_ids = extract_subnet({"params": ids}, space, arch)["params"]
    flat_m = np.concatenate([np.asarray(g).ravel() for g in jax.tree.leaves(gm)])
    used_ids = np.concatenate([np.asarray(i).ravel() for i in jax.tree.leaves(sub_ids)])
    used_g = np.concatenate([np.asarray(g).ravel() for g in jax.tree.leaves(gs)])
    outside = np.ones(flat_m.size, bool)
    outside[used_ids] = False
    assert outside.sum() > 0
    assert np.all(flat_m[outside] == 0.0), f"{arch.short()}: {np.count_nonzero(flat_m[outside])} " \
                                           "non-zero grads outside the arch"
    # Inside: the masked-mode gradient is the standalone network's gradient.
    np.testing.assert_allclose(flat_m[used_ids], used_g, rtol=1e-4, atol=1e-6)
    # Non-vacuous: most used weights get gradient (ReLU-dead units in stem/downsample do not).
    assert np.count_nonzero(used_g) > 0.5 * used_g.size


@pytest.mark.parametrize("name", ["evonas", "hybrid"])
def test_vmap_over_archs_equals_loop(name):
  space, model, v, x, masked = _setup(name)
  archs = _archs(space, 8, seed=5)
  stacked = stack_masks([arch_masks(space, a) for a in archs])
  batched = jax.jit(jax.vmap(lambda m: model.apply(v, x, m)))(stacked)
  for i, a in enumerate(archs):
    np.testing.assert_allclose(batched[i], masked(v, x, arch_masks(space, a)), atol=1e-5, rtol=0)
  # and the genome -> masks map itself vmaps (one trace for many candidates)
  from evonas_jax.space import genome_to_masks
  gs = np.stack([space.encode(a) for a in archs])
  vm = jax.vmap(lambda g: genome_to_masks(space, g))(gs)
  jax.tree.map(np.testing.assert_array_equal, vm, stacked)
