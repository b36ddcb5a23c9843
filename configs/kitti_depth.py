"""KITTI depth (Eigen split, KB crop 352x1216, max 80 m, Garg crop): dense CA-DDKD supernet at the official scale, for GPUs.

Command:  build the TFDS dataset once (array_record; see
          evonas_jax/data/dense.py, dataset "kitti_depth"), then
          python -m evonas_jax.train --config configs/kitti_depth.py --workdir workdirs/kitti_depth \
            --config.data.tfds_data_dir=/path/to/tensorflow_datasets
          and search it with configs/search_dense.py (--config.supernet_workdir=workdirs/kitti_depth).
Hardware: 8 GPUs (H100 class), multi-host via launch/slurm.sbatch; a CPU cannot run it.
Expected: NOT measured here (no GPU and no dataset on the development machine). Scale: the
          official supernet runs PST for 140 epochs (depth) / 870k iterations (ADE20K) with a
          large frozen teacher (research/evonas.md §3.4, §6); this config keeps the official
          loss weights (research §3.3, evonas_jax.dense_configs.PAPER_WEIGHTS) and the official 8 PST
          stages. The ViT teacher here is trained from scratch by stage 1 unless
          teacher.source="checkpoint" or "store" (precomputed features of a foundation model,
          evonas_jax.teacher_store) is set, which is what the paper does.
"""
from evonas_jax.dense_configs import gpu_dense_config


def get_config():
  c = gpu_dense_config("depth", "kitti_depth")
  return c
