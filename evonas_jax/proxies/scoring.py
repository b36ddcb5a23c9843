"""Vectorised scoring: one compile scores a chunk of archs (vmap over masks) for one or more init
seeds (vmap over params), averaged over seeds."""
from __future__ import annotations

import time

import jax
import numpy as np
from tqdm.auto import tqdm


def make_scorer(proxy_fn, model, vectorize: bool = True):
  """-> jitted f(params_seeds, masks, batch, rng) -> scores. The batch is an argument, not a
  closed-over constant: XLA would otherwise constant-fold the first convs at compile time.

  params_seeds: params pytree with a leading (S,) seed axis. vectorize=True: masks (A, ...) ->
  (S, A) in one call; vectorize=False: masks of one arch -> (S,) (the one-arch-at-a-time baseline).
  """
  def one(params, masks, batch, rng):
    return proxy_fn(model, params, masks, batch, rng)

  if vectorize:
    f = jax.vmap(jax.vmap(one, (None, 0, None, None)), (0, None, None, None))
  else:
    f = jax.vmap(one, (0, None, None, None))
  return jax.jit(f)


def score_archs(proxy_fn, model, params_seeds, masks, batch, rng, arch_batch: int = 8,
                desc: str = "", progress: bool = True) -> tuple[np.ndarray, dict]:
  """Scores of A archs, mean over seeds -> ((A,) float64, timing {"compile_s", "run_s"}).

  masks: pytree with a leading (A,) arch axis. The last chunk is padded (with the first arch) so
  every call has the compiled shape.
  """
  f = make_scorer(proxy_fn, model)
  n = jax.tree.leaves(masks)[0].shape[0]
  out, compile_s, t_run = [], 0.0, 0.0
  for start in tqdm(range(0, n, arch_batch), desc=desc, disable=not progress, leave=False):
    idx = np.arange(start, start + arch_batch)
    idx = np.where(idx < n, idx, 0)
    chunk = jax.tree.map(lambda a: a[idx], masks)
    t = time.perf_counter()
    s = np.asarray(jax.block_until_ready(f(params_seeds, chunk, batch, rng)), np.float64)
    dt = time.perf_counter() - t
    if start == 0:
      compile_s = dt
    else:
      t_run += dt
    out.append(s.mean(0)[: min(arch_batch, n - start)])
  return np.concatenate(out), {"compile_plus_first_s": compile_s, "run_s": t_run}
