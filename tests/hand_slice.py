"""Supernet -> standalone parameters by hand, for the tests' independent "standalone" legs.

Written from the documented parameter layouts of the modules (evonas_jax/nn/*.py docstrings),
with explicit index arithmetic; it uses none of evonas_jax's slicing code (extract_subnet,
slice_params, take_segments). `fill_standalone` walks the variables tree of the standalone
network's own init (`jax.eval_shape(net.init, ...)` is enough: every leaf is replaced, so only
the init's names and shapes matter) and replaces every leaf by the supernet slice the arch
selects, checking keys and shapes against the standalone module's own allocation.

Elastic widths are leading channels (masked mode keeps the first d_inner / d_state / hidden
channels). The layouts:
  mlp        fc1 kernel (C, H) + bias (H,), fc2 kernel (H, C) + bias (C,)
  vssd       in_proj kernel (C, 2D + 2N + nh) = columns [z (D) | x (D) | B (N) | C (N) | dt (nh)],
             conv (3, 3, 1, D + 2N) channels [x (D) | B (N) | C (N)], dt_bias / A_log / D (nh,),
             norm (D,), out_proj (D, C)
  ss2d       in_proj (C, 2D) = columns [x (D) | z (D)], conv (3, 3, 1, D), x_proj (4, r + 2N, D)
             rows [dt (r) | B (N) | C (N)], dt_proj_w (4, D, r), dt_proj_b (4, D), A_log (4, D, N),
             D (4, D), norm (D,), out_proj (D, C)
  attention  not elastic (qkv, proj at the stage's dim)
"""
import jax
import numpy as np


def _cols(*ranges):
  """Concatenated index ranges [(start, length), ...] -> int array."""
  return np.concatenate([np.arange(s, s + n) for s, n in ranges]).astype(np.int64)


def _vssd(p, ds, ns):
  D = p["norm"]["scale"].shape[0]
  N = (p["conv"]["bias"].shape[0] - D) // 2
  nh = p["in_proj"]["kernel"].shape[1] - 2 * D - 2 * N
  cin = _cols((0, ds), (D, ds), (2 * D, ns), (2 * D + N, ns), (2 * D + 2 * N, nh))
  conv = _cols((0, ds), (D, ns), (D + N, ns))
  return {"in_proj": {"kernel": p["in_proj"]["kernel"][:, cin]},
          "conv": {"kernel": p["conv"]["kernel"][..., conv], "bias": p["conv"]["bias"][conv]},
          "dt_bias": p["dt_bias"], "A_log": p["A_log"], "D": p["D"],
          "norm": {"scale": p["norm"]["scale"][:ds], "bias": p["norm"]["bias"][:ds]},
          "out_proj": {"kernel": p["out_proj"]["kernel"][:ds]}}


def _ss2d(p, ds, ns):
  D, N = p["A_log"].shape[1:]
  r = p["x_proj"].shape[1] - 2 * N
  rows = _cols((0, r), (r, ns), (r + N, ns))
  return {"in_proj": {"kernel": p["in_proj"]["kernel"][:, _cols((0, ds), (D, ds))]},
          "conv": {"kernel": p["conv"]["kernel"][..., :ds], "bias": p["conv"]["bias"][:ds]},
          "x_proj": p["x_proj"][:, rows, :ds],
          "dt_proj_w": p["dt_proj_w"][:, :ds], "dt_proj_b": p["dt_proj_b"][:, :ds],
          "A_log": p["A_log"][:, :ds, :ns], "D": p["D"][:, :ds],
          "norm": {"scale": p["norm"]["scale"][:ds], "bias": p["norm"]["bias"][:ds]},
          "out_proj": {"kernel": p["out_proj"]["kernel"][:ds]}}


def _block(p, mixer, hidden, ds, ns):
  out = {k: p[k] for k in ("cpe1", "norm1", "cpe2", "norm2")}
  m = p["mlp"]
  out["mlp"] = {
      "fc1": {"kernel": m["fc1"]["kernel"][:, :hidden], "bias": m["fc1"]["bias"][:hidden]},
      "fc2": {"kernel": m["fc2"]["kernel"][:hidden], "bias": m["fc2"]["bias"]}}
  q = p[f"mixer_{mixer}"]
  out[f"mixer_{mixer}"] = {"vssd": lambda: _vssd(q, ds, ns), "ss2d": lambda: _ss2d(q, ds, ns),
                           "attention": lambda: q}[mixer]()
  return out


def _fill(fresh, source, where):
  """fresh's tree with each leaf replaced by source's leaf at the same path. The two trees must
  have the same keys at every level and the same leaf shapes (the standalone module allocates
  exactly what the arch selects)."""
  if hasattr(fresh, "items"):
    if set(fresh) != set(source):
      raise AssertionError(f"{where}: standalone has {sorted(fresh)}, the slices {sorted(source)}")
    return {k: _fill(v, source[k], f"{where}/{k}") for k, v in fresh.items()}
  src = np.asarray(source)   # the supernet's dtype (float64 in the float64 tests)
  if src.shape != tuple(fresh.shape):
    raise AssertionError(f"{where}: supernet slice {src.shape} != standalone {tuple(fresh.shape)}")
  return src


def backbone_slices(params, space, arch) -> dict:
  """The EvoNet params the standalone network of `arch` needs, sliced from the supernet's
  `params`: stem / downsamples / classifier whole, and block i of stage s (named by its supernet
  index) at hidden = int(dim * mlp_ratio), d_inner = int(dim * expand), d_state."""
  out = {k: v for k, v in params.items() if not k.startswith("stage")}
  for s, c in enumerate(space.dims):
    hidden, ds, ns = int(c * arch.mlp_ratio[s]), int(c * arch.expand[s]), arch.d_state[s]
    for i, bit in enumerate(arch.depth[s]):
      if bit:
        name = f"stage{s}_block{i}"
        out[name] = _block(params[name], arch.block_type[s], hidden, ds, ns)
  return out


def fill_standalone(fresh, supernet, space, arch, backbone_key=None):
  """Variables of the standalone net (`fresh`: its own init or its eval_shape) with every leaf
  copied from the supernet's variables. backbone_key: None for an EvoNet, "backbone" for a
  DenseEvoNet (whose outnorms / decoder are shared whole)."""
  supernet = jax.tree.map(np.asarray, supernet)   # numpy slicing: no per-shape jax dispatch
  params = dict(supernet["params"])
  if backbone_key is None:
    params = backbone_slices(params, space, arch)
  else:
    params[backbone_key] = backbone_slices(params[backbone_key], space, arch)
  out = {"params": _fill(fresh["params"], params, "params")}
  if "batch_stats" in fresh:   # stem / downsample / decoder BatchNorms: not elastic
    out["batch_stats"] = _fill(fresh["batch_stats"], supernet["batch_stats"], "batch_stats")
  return out
