"""The persistent compilation cache: a second process compiles nothing the first compiled.

Two fresh processes run the same engine programs (a tiny-space subnet's backbone forward and
backward) with the same cache directory; the second must load every executable from the cache
(CompileStats counts backend compiles that were not cache hits).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp
from evonas_jax import compile_cache
compile_cache.enable(sys.argv[1])
stats = compile_cache.CompileStats()
from evonas_jax.engine import CompiledBackbone
from evonas_jax.nn.supernet import init_supernet
from evonas_jax.space import get_space
space = get_space("evonas", "tiny")
_, v = init_supernet(space, 10, jax.random.key(0), (16, 16, 1))
bb = {k: w for k, w in v["params"].items() if k.startswith(("stem", "downsample", "stage"))}
eng = CompiledBackbone(space)
feats, _, tape = eng.forward(bb, v["batch_stats"], jnp.ones((2, 16, 16, 1)), space.smallest(),
                             train=True)
g = eng.backward(tape, [jnp.ones(f.shape) for f in feats])
jax.block_until_ready(g)
print("STATS" + json.dumps(stats.snapshot()))
"""


def _run(cache_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("EVONAS_JAX_COMPILE_CACHE", None)
  out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache_dir)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [ln for ln in out.stdout.splitlines() if ln.startswith("STATS")][-1]
  return json.loads(line[len("STATS"):])


def test_second_process_compiles_nothing(tmp_path):
  first = _run(tmp_path / "xla")
  assert first["compiles"] >= 12, first        # stem, 3 downsamples, 8 block halves, backwards
  assert first["cache_hits"] == 0, first
  assert any((tmp_path / "xla").iterdir())
  second = _run(tmp_path / "xla")
  assert second["compiles"] == 0, second
  assert second["cache_hits"] >= first["compiles"], (first, second)


def test_prune_removes_oldest_entries_first(tmp_path):
  from evonas_jax import compile_cache
  for i in range(5):   # entries 0..4, 100 bytes each, entry 0 the oldest
    p = tmp_path / f"k{i}-cache"
    p.write_bytes(b"x" * 100)
    os.utime(p, (1000 + i, 1000 + i))
  (tmp_path / "other.txt").write_bytes(b"y" * 1000)   # not an entry: never counted or removed
  assert compile_cache.prune(str(tmp_path), max_bytes=250) == 3
  assert sorted(os.listdir(tmp_path)) == ["k3-cache", "k4-cache", "other.txt"]
  assert compile_cache.prune(str(tmp_path), max_bytes=250) == 0
  assert compile_cache.prune(str(tmp_path / "missing")) == 0
