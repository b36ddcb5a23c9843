"""Export: python -m evonas_jax.export --workdir SEARCH_DIR --select 3

Writes a standalone EvoNet folder (arch.json, params/ orbax, params.npz, model_cpu.jax_export,
model_cuda.jax_export) that runs with numpy + jax alone: see examples/run_export.py.

  --select 3            row 3 of the search's pareto.json
  --select 0,1,2,...    a genome (comma list of gene indices; also works on a training workdir)
  (no --select)         a finetune workdir (`evonas_jax.finetune`): the subnet it fine-tuned
  --select "latency_ms<=2.5"   the most accurate pareto row within a budget (clauses joined by
                        '&', fields of pareto.json: latency_ms, macs, params, error, ...)
  --out DIR             default <workdir>/export/pareto_<i> or .../genome_<hash>
  --batch_size B        fixed batch in the artifacts (default 0: symbolic batch "b")
  --platforms cpu,cuda  artifacts to lower (CUDA lowers fine on a CPU-only machine)
  --formats jax_export,onnx   what to write: jax.export artifacts and/or model.onnx (checked
                        against JAX in onnxruntime; needs `pip install --no-deps jax2onnx==0.17.1`)
  --formats onnx,int8   also model.int8.onnx: static int8 quantisation of model.onnx, its
                        validation accuracy and batch-1 latency compared with model.onnx
  --int8_max_drop D     accuracy the int8 model may lose (default 0.01 absolute); above it the
                        int8 model is REJECTED: still written, but the command exits with status 3
  --allow_int8_drop     exit 0 despite a rejected int8 model (arch.json still says "rejected")
  --int8_val_images N   validation images for the fp32 / int8 accuracy (default 1000)
  --bn_recalib_batches N  BatchNorm recalibration batches (default: the workdir's config)
  --overwrite           replace an existing DIR
"""
from absl import app, flags

flags.DEFINE_string("workdir", None, "A search workdir (pareto.json) or a training workdir.")
flags.DEFINE_string("select", None, "A pareto.json row index, a genome as a comma list, or a "
                    "budget such as 'latency_ms<=2.5' (the most accurate row meeting it).")
flags.DEFINE_string("out", None, "Export folder (default <workdir>/export/<name>).")
flags.DEFINE_integer("batch_size", 0, "Fixed batch size of the artifacts; 0 = symbolic.")
flags.DEFINE_string("platforms", "cpu,cuda", "Comma list of platforms to lower for: cpu, cuda.")
flags.DEFINE_integer("bn_recalib_batches", None,
                     "BatchNorm recalibration batches for the subnet (default from the config; "
                     "0 keeps the supernet's shared statistics).")
flags.DEFINE_string("formats", "jax_export",
                    "Comma list of artifact formats: jax_export, onnx, int8 (int8 needs onnx).")
flags.DEFINE_float("int8_max_drop", 0.01, "Largest top-1 accuracy drop (absolute, fp32 ONNX - "
                   "int8 ONNX, on the validation split) for an int8 model to be accepted.")
flags.DEFINE_integer("int8_val_images", 1000, "Validation images the int8 accuracy check uses.")
flags.DEFINE_bool("allow_int8_drop", False, "Exit 0 even when the int8 model is rejected "
                  "(accuracy drop > --int8_max_drop); arch.json still records it as rejected.")
flags.DEFINE_bool("overwrite", False, "Replace an existing export folder.")
flags.DEFINE_string("compile_cache_dir", "", "Persistent XLA compilation cache folder ('' = the "
                    "per-user default, 'none' = off).")
flags.mark_flags_as_required(["workdir"])   # --select may be left out for a finetune workdir


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from evonas_jax import compile_cache, export_lib
  f = flags.FLAGS
  compile_cache.enable(f.compile_cache_dir)
  try:
    res = export_lib.export_subnet(f.workdir, f.select, f.out, batch_size=f.batch_size,
                                   platforms=f.platforms, bn_recalib_batches=f.bn_recalib_batches,
                                   overwrite=f.overwrite, formats=f.formats,
                                   int8_max_drop=f.int8_max_drop,
                                   int8_val_images=f.int8_val_images)
  except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError,
          ImportError) as e:
    # Bad input: the message names the flag and the allowed values; no traceback needed.
    raise app.UsageError(str(e)) from None
  export_lib.print_summary(res)
  int8 = res.meta["artifacts"].get("int8")
  if int8 and int8["status"] == "rejected":
    # A quantised model that lost accuracy must not look like a finished export to a script.
    msg = (f"int8 model REJECTED: accuracy drop {int8['drop']:.4f} > --int8_max_drop="
           f"{int8['max_drop']} ({int8['metric_fp32']:.4f} -> {int8['metric_int8']:.4f}); "
           f"{res.out}/{int8['file']} is for inspection only")
    if not f.allow_int8_drop:
      print(f"ERROR: {msg}. Exit status 3 (pass --allow_int8_drop to exit 0).", flush=True)
      raise SystemExit(3)
    print(f"WARNING: {msg} (--allow_int8_drop: exiting 0).", flush=True)


if __name__ == "__main__":
  app.run(main)
