"""NAS-Bench-201 zero-cost proxy benchmark at full size: the standard C=16, N=5 network,
1000 archs, 20 real CIFAR-10 images, all proxies, L-SWAG per-sample variance.

Command:  python -m evonas_jax.proxies.bench --config configs/proxies_nb201_full.py --workdir W
Hardware: one GPU (on a shared 2-core CPU this is ~30 s per arch per gradient proxy: days).
Expected: Spearman vs the paper anchor L-SWAG 0.79 / 0.83 / 0.80 (C10 / C100 / IN16-120).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_proxies_nb201_base", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "proxies_nb201.py"))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_base = _mod.get_config


def get_config():
  c = _base()
  c.num_archs = 1000
  c.net.channels = 16
  c.net.cells = 5
  c.arch_batch = 16
  c.lswag.variance = "per_sample"
  c.lswag.calib_archs = 100
  return c
