"""Dense-task search: NSGA-II over a trained depth or segmentation supernet (configs/depth_local.py,
seg_local.py, nyu_depth.py, kitti_depth.py, ade20k_seg.py), DMMPE fitness on the validation split.

Command:  python -m evonas_jax.search --config configs/search_dense.py \\
            --workdir workdirs/search_depth --config.supernet_workdir=workdirs/depth_local
Hardware: 2 CPU cores for the local scenes (minutes); GPUs for NYU/KITTI/ADE20K (raise
          population_size / num_generations / evaluator.num_eval_batches there).
Expected: error objective = AbsRel for depth, 1 - mIoU for segmentation (the task metric, not a
          loss); latency = the backbone lookup table + the measured decoder (the whole task model,
          batch 1); MACs/params of backbone + decoder. Writes pareto.json/.csv/.png with the
          task metric as the score column.
"""
import importlib.util
import os


def _quickstart_search_config():
  # Config files are loaded by path (ml_collections config_flags), not as a package.
  spec = importlib.util.spec_from_file_location(
      "search_quickstart", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "search_quickstart.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def get_config():
  c = _quickstart_search_config()
  c.population_size = 8
  c.num_generations = 3
  c.evaluator.num_eval_batches = 1
  c.evaluator.eval_batch_size = 2          # the local scenes have one validation image
  c.evaluator.calib_batches = 1
  c.evaluator.calib_batch_size = 4
  c.evaluator.group_size = 2
  c.latency_validation_archs = 0
  c.measure_pareto_max = 2
  return c
