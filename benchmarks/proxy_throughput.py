"""Proxy throughput: archs/s with vmap over a chunk of archs (one compile) vs one arch at a time
(one compile too: the arch is data), per proxy, on the masked NB201 network.

    python benchmarks/proxy_throughput.py [--channels 8 --cells 1 --archs 16 --chunk 8]
    python benchmarks/proxy_throughput.py --proxies lswag,grad_norm --merge   # add rows

Compile time is excluded from both (one warm-up call each). Writes
benchmarks/results/proxy_throughput.json with archs/s and the vmapped / looped ratio; `--merge`
keeps the rows of proxies not measured in this call (each row records the command that made it).
L-SWAG runs with the NB201 bench's settings (configs/proxies_nb201.py: ZiCo-style minibatch
variance, 2 splits, band (5, 6)) unless --lswag-variance / --lswag-band say otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from evonas_jax.data.cifar_samples import cifar10_batch  # noqa: E402
from evonas_jax.nn import nb201 as nbnet  # noqa: E402
from evonas_jax.proxies import get_proxy, nb201_proxy_model, proxy_names  # noqa: E402
from evonas_jax.proxies.scoring import make_scorer  # noqa: E402
from evonas_jax.space import nb201 as nbspace  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--channels", type=int, default=8)
  ap.add_argument("--cells", type=int, default=1)
  ap.add_argument("--archs", type=int, default=16)
  ap.add_argument("--chunk", type=int, default=8)
  ap.add_argument("--proxies", default=",".join(proxy_names()))
  ap.add_argument("--out", default=os.path.join(HERE, "results", "proxy_throughput.json"))
  ap.add_argument("--merge", action="store_true", help="keep other proxies' rows in --out")
  ap.add_argument("--lswag-variance", default="minibatch", choices=("minibatch", "per_sample"))
  ap.add_argument("--lswag-band", default="5,6", help="lo,hi depth deciles")
  a = ap.parse_args()
  kwargs = {"lswag": {"variance": a.lswag_variance, "num_splits": 2,
                      "band": tuple(int(v) for v in a.lswag_band.split(","))}}
  if a.archs % a.chunk:
    raise ValueError(f"--archs ({a.archs}) must be a multiple of --chunk ({a.chunk})")
  cfg = nbnet.NB201Config(channels=a.channels, cells=a.cells)
  model = nb201_proxy_model(cfg)
  batch = {k: jnp.asarray(v) for k, v in cifar10_batch().items()}
  params = jax.tree.map(lambda t: t[None], nbnet.init_nb201(cfg, jax.random.key(0))[1]["params"])
  masks = nbspace.genome_to_masks(nbspace.NB201Space().sample(0, a.archs))
  rng = jax.random.key(1)
  res = {}
  for name in a.proxies.split(","):
    fn = get_proxy(name)
    if name in kwargs:
      fn = (lambda f, kw: lambda *args: f(*args, **kw))(fn, kwargs[name])
    vec, loop = make_scorer(fn, model, True), make_scorer(fn, model, False)
    jax.block_until_ready(vec(params, masks[: a.chunk], batch, rng))
    jax.block_until_ready(loop(params, masks[0], batch, rng))
    t = time.perf_counter()
    for s in range(0, a.archs, a.chunk):
      jax.block_until_ready(vec(params, masks[s:s + a.chunk], batch, rng))
    tv = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(a.archs):
      jax.block_until_ready(loop(params, masks[i], batch, rng))
    tl = time.perf_counter() - t
    res[name] = {"vmapped_archs_per_s": a.archs / tv, "looped_archs_per_s": a.archs / tl,
                 "ratio_vmapped_over_looped": tl / tv,
                 "command": "python benchmarks/proxy_throughput.py " + " ".join(sys.argv[1:]),
                 "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if name in kwargs:
      res[name]["settings"] = {k: list(v) if isinstance(v, tuple) else v
                               for k, v in kwargs[name].items()}
    print(name, res[name], flush=True)
  out = {"device": str(jax.devices()[0]), "platform": platform.processor() or platform.machine(),
         "cpu_count": os.cpu_count(), "net": {"channels": a.channels, "cells": a.cells},
         "images": int(batch["image"].shape[0]), "archs": a.archs, "chunk": a.chunk,
         "note": "shared machine; other jobs ran concurrently, so absolute numbers are noisy",
         "proxies": res}
  if a.merge and os.path.exists(a.out):
    with open(a.out) as f:
      old = json.load(f)
    if old.get("net") != out["net"] or old.get("archs") != a.archs or old.get("chunk") != a.chunk:
      raise ValueError(f"--merge: {a.out} was measured with other --channels/--cells/--archs/"
                       "--chunk; use the same values or another --out")
    out = {**old, "proxies": {**old.get("proxies", {}), **res}}
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
