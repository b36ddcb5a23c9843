"""ADE20K (150 classes, 512x512 crops): dense CA-DDKD supernet at the official scale, for GPUs.

Command:  build the TFDS dataset once (array_record; see
          evonas_jax/data/dense.py, dataset "ade20k"), then
          python -m evonas_jax.train --config configs/ade20k_seg.py --workdir workdirs/ade20k_seg \
            --config.data.tfds_data_dir=/path/to/tensorflow_datasets
          and search it with configs/search_dense.py (--config.supernet_workdir=workdirs/ade20k_seg).
Hardware: 8 GPUs (H100 class), multi-host via launch/slurm.sbatch; a CPU cannot run it.
Expected: NOT measured here (no GPU and no dataset on the development machine). Scale: the
          official supernet runs PST for 140 epochs (depth) / 870k iterations (ADE20K) with a
          large frozen teacher (research/evonas.md §3.4, §6); this config keeps the official
          loss weights (research §3.3: λ=0.5, α1=3e-5, α2=2e-5) and the official 8 PST
          stages. The ViT teacher here is trained from scratch by stage 1 unless
          teacher.source="checkpoint" or "store" (precomputed features of a foundation model,
          evonas_jax.teacher_store) is set, which is what the paper does.
"""
from evonas_jax.dense_configs import gpu_dense_config


def get_config():
  c = gpu_dense_config("segmentation", "ade20k")
  return c
