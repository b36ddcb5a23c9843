"""Search: python -m evonas_jax.search --config configs/search_quickstart.py --workdir DIR

Any config field can be overridden: --config.supernet_workdir=workdirs/quickstart
--config.num_generations=20. Rerunning the same command resumes an interrupted search;
--stop_after_generations=N stops after N new generations (time-sliced jobs).
"""
from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a configs/search_*.py file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Search directory (config.json, checkpoints, pareto.*).")
flags.DEFINE_integer("stop_after_generations", None,
                     "Stop after this many new generations; rerun to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from evonas_jax import search_lib, train_config
  try:   # bad input: a one-line message naming the field / path, no traceback
    search_lib.validate_config(flags.FLAGS.config)
    train_config.check_workdir(flags.FLAGS.workdir)
  except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
          PermissionError) as e:
    raise app.UsageError(str(e)) from None
  from evonas_jax.search_lib import run_search
  run_search(flags.FLAGS.config, flags.FLAGS.workdir,
             max_generations_this_run=flags.FLAGS.stop_after_generations)


if __name__ == "__main__":
  # An unknown --config.<field> is a one-line usage error naming it, not a traceback.
  from evonas_jax.train_config import config_flags_parser
  app.run(main, flags_parser=config_flags_parser)
