"""Convert official EvoNAS / VSSD PyTorch weights into evonas_jax, and back.

Into evonas_jax (the network is the one `train` builds for --config, so init_from fits):
  python -m evonas_jax.convert --from official.pth --to DIR --config configs/base.py
  python -m evonas_jax.convert --from vssd_tiny.pth --remap --to DIR --config configs/base.py \
      --skip '^head\\.'          # VSSD-T ImageNet weights into the supernet (1000-class head off)
  then: python -m evonas_jax.train --config configs/base.py --workdir W --config.init_from=DIR

Back to the official layout (a training or search workdir):
  python -m evonas_jax.convert --reverse --from WORKDIR --to supernet.safetensors
  python -m evonas_jax.convert --reverse --from SEARCH_DIR --select 3 --to subnet.safetensors

Formats by extension: .safetensors, .npz (no torch needed) or .pth (needs torch). Every source
key ends in DIR/convert_report.json (or <to>.report.json): mapped, remapped (padded/sliced),
dropped, skipped or unmapped; an unmapped key is an error unless --allow_unmapped.
"""
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "configs/*.py: the network to convert into "
                                "(space, preset, task, data); not used with --reverse.",
                                lock_config=True)
flags.DEFINE_string("from", None, "Source: an official state-dict file, or with --reverse an "
                    "evonas_jax training/search workdir.")
flags.DEFINE_string("to", None, "Destination: a new directory, or with --reverse a "
                    ".safetensors/.npz/.pth file.")
flags.DEFINE_bool("reverse", False, "evonas_jax -> official format.")
flags.DEFINE_bool("remap", False, "Fit a checkpoint of other elastic widths (VSSD-T: expand 2) "
                  "into the supernet, segment-wise, leading channels first.")
flags.DEFINE_enum("pad", "init", ["init", "zero"], "With --remap: fill the channels beyond the "
                  "source with the target's initialisation (trainable) or zeros.")
flags.DEFINE_multi_string("skip", [], "Regex of official keys to leave out (target keeps its "
                          "initialisation). Repeatable.")
flags.DEFINE_bool("allow_unmapped", False, "Drop keys without a counterpart instead of failing "
                  "(they are listed in the report).")
flags.DEFINE_string("select", None, "With --reverse: a pareto.json row or a genome (comma list): "
                    "export that subnet in the official standalone layout.")
flags.DEFINE_bool("overwrite", False, "With --reverse: replace an existing --to file.")
flags.DEFINE_string("compile_cache_dir", "", "Persistent XLA compilation cache folder ('' = the "
                    "per-user default, 'none' = off).")
flags.mark_flags_as_required(["from", "to"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from evonas_jax import compile_cache
  from evonas_jax.convert import pipeline
  f = flags.FLAGS
  compile_cache.enable(f.compile_cache_dir)
  try:
    if f.reverse:
      pipeline.export_official(getattr(f, "from"), f.to, select=f.select,
                               allow_unmapped=f.allow_unmapped, overwrite=f.overwrite)
    else:
      if f.config is None:
        raise ValueError("--config is required (the evonas_jax network to convert into: the "
                         "configs/*.py file you will train with)")
      pipeline.import_official(getattr(f, "from"), f.to, f.config, remap=f.remap, pad=f.pad,
                               skip=f.skip, allow_unmapped=f.allow_unmapped)
  except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError,
          PermissionError) as e:
    # Bad input: the message names the key, file or flag; no traceback needed.
    raise app.UsageError(str(e)) from None


if __name__ == "__main__":
  # An unknown --config.<field> is a one-line usage error naming it, not a traceback.
  from evonas_jax.train_config import config_flags_parser
  app.run(main, flags_parser=config_flags_parser)
