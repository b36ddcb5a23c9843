"""Train the teacher and the CA-DDKD supernet.

  python -m evonas_jax.train --config configs/quickstart.py --workdir DIR [--config.key=value ...]

Rerunning the same command resumes from the last checkpoint. Multi-process / multi-host:
  launch/local_multiprocess.sh N ...   (N processes on this machine, CPU, localhost coordinator)
  launch/slurm.sbatch                  (one task per host; jax.distributed auto-detects SLURM)
or pass --coordinator host:port --num_processes N --process_id I yourself.
"""
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (config.json, metrics.jsonl, checkpoints).")
flags.DEFINE_string("coordinator", "", "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", -1, "This process's id in 0..num_processes-1.")
flags.DEFINE_integer("local_devices", 0, "CPU only: devices per process (0 = leave as is).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  import jax
  f = flags.FLAGS
  if f.local_devices:
    jax.config.update("jax_num_cpu_devices", f.local_devices)
  from evonas_jax import parallel
  parallel.initialize_distributed(f.coordinator, f.num_processes, f.process_id)
  from evonas_jax import train_config
  try:   # bad input: a one-line message naming the field / path, no traceback
    train_config.validate_train_config(f.config)
    train_config.check_workdir(f.workdir)
  except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
          PermissionError) as e:
    raise app.UsageError(str(e)) from None
  from evonas_jax.trainer import train_and_evaluate
  try:
    train_and_evaluate(f.config, f.workdir)
  except BaseException:
    if jax.process_count() > 1:
      # Printed now: while a peer process still runs, the shutdown below fails its barrier and
      # aborts this process, which would swallow the traceback.
      traceback.print_exc()
      sys.stderr.flush()
    raise
  finally:
    if jax.process_count() > 1:
      jax.distributed.shutdown()


if __name__ == "__main__":
  # An unknown --config.<field> is a one-line usage error naming it, not a traceback.
  from evonas_jax.train_config import config_flags_parser
  app.run(main, flags_parser=config_flags_parser)
