"""Quickstart search: NSGA-II over the tiny EvoNAS space on Fashion-MNIST, DMMPE fitness.

Command:  python -m evonas_jax.search --config configs/search_quickstart.py \
            --workdir workdirs/search_quickstart \
            --config.supernet_workdir=workdirs/quickstart      # the trained supernet's workdir
          (leave supernet_workdir empty to search a random supernet: a loud warning, for tests)
Hardware: 2 CPU cores, no GPU (one CPU device: DMMPE runs one sub-mesh; with
          XLA_FLAGS=--xla_force_host_platform_device_count=2 it runs two).
Expected: measured on a quiet 2-core machine with the configs/quickstart.py supernet, empty
          compile cache (benchmarks/results/quickstart.json): 213 s (latency table of 90 ops
          ~60 s; fitness of pop 16 x 6 generations on 500 validation images each after exact BN
          statistics over 4 x 128 calibration images; latency of 4 Pareto archs measured); front
          of 15 archs, validation accuracy 0.632-0.844 rising with MACs (Spearman 0.92),
          hypervolume 0.61. The measured latencies enter the lookup table, so the front varies
          a little from run to run.
          Writes pareto.json/.csv/.png, metrics.jsonl (hypervolume per generation) and prints
          the front as a table.
"""
import ml_collections

from evonas_jax import data, evaluate


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tensorboard = True                  # TensorBoard scalars in <workdir>/tensorboard/search
  c.compile_cache_dir = ""              # persistent XLA cache: '' per-user default, 'none' off
  c.supernet_workdir = ""     # a finished `evonas_jax.train` workdir (config.json + final/)
  # Used only without a supernet_workdir (else the training run's space/preset/data are used).
  c.space = "evonas"
  c.preset = "tiny"
  # Optional smaller space (random-supernet runs only: smoke tests); () keeps the preset's.
  c.space_overrides = ml_collections.ConfigDict()
  c.space_overrides.max_depths = ()        # e.g. (1, 2, 2, 1)
  c.space_overrides.mlp_choices = ()       # e.g. (1.0, 4.0)
  c.space_overrides.d_state_choices = ()
  c.space_overrides.expand_choices = ()
  c.data = data.get_config_defaults()

  c.population_size = 16
  c.num_generations = 6
  c.objectives = "error,latency,macs"   # comma list of: error, latency, macs, params
  c.latency = "lut"                     # "lut" (lookup-table prediction) | "measured"
  # What times latency, for the lookup table's ops and for measured networks alike: "xla" (the
  # jitted JAX programs, on the first JAX device) | "onnxruntime" (the ONNX models the export
  # ships, on this machine's CPU, config.latency_measure.threads intra-op threads).
  c.latency_backend = "xla"
  # A table JSON built on the target device ('' = build one here): write a bundle with
  # `python -m evonas_jax.latency_bundle`, run its build_device_table.py on the device, pass the
  # JSON here. The LUT objective is then that device's latency.
  c.latency_table = ""
  c.constraints = ml_collections.ConfigDict()
  c.constraints.max_latency_ms = 0.0    # 0 = no constraint
  c.constraints.max_macs = 0
  c.constraints.max_params = 0
  c.nsga2 = ml_collections.ConfigDict()
  c.nsga2.crossover_prob = 0.95         # official settings (research/evonas.md §4)
  c.nsga2.mutation_prob = 0.1

  c.evaluator = ml_collections.ConfigDict()
  # "dmmpe" | "data_parallel" | "engine". Measured here (benchmarks/results/dmmpe_cpu1.json, 32
  # candidates, 1 CPU device): dmmpe 33 s end to end, engine 60 s (38 s of it compiling one
  # program per new width signature; 1.3x faster than dmmpe once compiled), so at this budget
  # the vmapped masked DMMPE stays the default.
  c.evaluator.kind = "dmmpe"
  c.evaluator.split = "validation"      # never "test"
  c.evaluator.num_eval_batches = 1
  c.evaluator.eval_batch_size = 500
  # Per-candidate BatchNorm recalibration: exact statistics over batches x batch_size augmented
  # train images (evonas_jax.evaluate.bn), the default training evaluation and export use too.
  c.evaluator.calib_batches = evaluate.DEFAULT_CALIB_BATCHES
  c.evaluator.calib_batch_size = evaluate.DEFAULT_CALIB_BATCH_SIZE
  c.evaluator.num_devices = 0           # 0 = every local device (each sub-mesh compiles once)
  c.evaluator.devices_per_group = 1
  c.evaluator.group_size = 4            # candidates vmapped in one compiled call
  # "pool": one executable over every device (groups of group_size x devices/devices_per_group);
  # "submeshes": one per sub-mesh, each pulling groups from a queue.
  c.evaluator.layout = "pool"
  # Depth tasks: score AbsRel after the official flip test-time augmentation (prediction on the
  # image and its mirror, edge-blended; evonas_jax.tasks.flip_tta_blend). Two passes per batch.
  c.evaluator.depth_flip_tta = True

  c.latency_measure = ml_collections.ConfigDict()
  c.latency_measure.batch = 1
  c.latency_measure.warmup = 30         # official protocol: 30 warm-up, 50 timed runs
  c.latency_measure.runs = 50
  c.latency_measure.table_warmup = 5    # per-op table entries
  c.latency_measure.table_runs = 20
  c.latency_measure.threads = 1         # onnxruntime intra-op threads (latency_backend onnxruntime)
  c.latency_validation_archs = 4        # random archs for the table's Spearman rho (0 = skip)
  c.measure_pareto_latency = True       # measure the final Pareto set on this device
  c.measure_pareto_max = 4              # at most this many (0 = all)
  return c
