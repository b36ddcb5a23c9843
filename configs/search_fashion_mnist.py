"""Full-shape search: the official NSGA-II budget (pop 96 x 200 generations, ~19k candidates).

Command:  python -m evonas_jax.search --config configs/search_fashion_mnist.py \
            --workdir workdirs/search_fmnist --config.supernet_workdir=<trained supernet workdir>
Hardware: meant for a GPU node (8 GPUs with devices_per_group=2: 4 sub-meshes, groups of 8);
          runs anywhere, slowly. On 2 CPU cores expect hours (fitness ~0.3 s per candidate on
          the 5000 validation images at tiny width, dominated by the ~19k evaluations).
Expected: a Pareto front of ~40-96 archs between the smallest and the largest subnet; the
          search resumes from its last generation when rerun after an interruption.
"""
import importlib.util
import os


def _quickstart():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "search_quickstart.py")
  spec = importlib.util.spec_from_file_location("search_quickstart", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def get_config():
  c = _quickstart().get_config()
  c.population_size = 96
  c.num_generations = 200
  c.evaluator.num_eval_batches = 0      # the whole validation split (5000 images)
  c.evaluator.group_size = 8            # on 8 GPUs add --config.evaluator.devices_per_group=2
  c.latency_validation_archs = 30
  c.measure_pareto_max = 0
  return c
