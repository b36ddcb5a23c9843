"""File-level conversions behind `python -m evonas_jax.convert` (see its docstring).

`import_official(src, out_dir, config)`: an official state-dict file -> `out_dir/final` (orbax,
the {"params", "batch_stats"} tree `train --config.init_from=out_dir` loads) and
`out_dir/convert_report.json` (every source key: mapped / remapped / dropped / skipped /
unmapped, and every target leaf kept at its initialisation).

`export_official(workdir, out_path)`: a training or search workdir's supernet (or, with
`select`, one subnet sliced in the official standalone layout) -> an official-format state
dict (.safetensors / .npz / .pth) + `<out_path>.report.json`.
"""
from __future__ import annotations

import json
import os

import numpy as np

from evonas_jax.convert import convert_lib, state_dict_io


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=1)
    f.write("\n")


def target_variables(config):
  """(space, task, variables, head_cfg): the student variables `train` initialises for
  `config` (its space, preset, task, data, seed), the tree a converted checkpoint must fit."""
  import jax
  from evonas_jax.space import get_space
  from evonas_jax.task_runtime import make_runtime
  space = get_space(config.space, config.preset)
  rt = make_runtime(config)
  variables = rt.init_student(space, jax.random.key(config.seed))
  return space, rt.name, jax.device_get(variables), dict(config.get("head_cfg", {}) or {})


def _check_parent_dir(path: str, flag: str) -> None:
  """Raises NotADirectoryError naming --flag when an existing ancestor of `path` is a file."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent) and os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
  if os.path.exists(parent) and not os.path.isdir(parent):
    raise NotADirectoryError(f"--{flag} {path}: {parent} is a file, not a directory")


def check_import_args(src: str, out_dir: str, config, *, pad: str = "init", skip=()) -> dict:
  """The checks `import_official` runs before building any network: --to, --pad, --skip, the
  --config (train_config.validate_train_config) and the --from file (read here: its arrays are
  returned). Raises ValueError / FileExistsError / FileNotFoundError / NotADirectoryError
  naming the flag, field or file; writes nothing."""
  import re
  from evonas_jax.train_config import validate_train_config
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise FileExistsError(f"--to {out_dir} exists and is not a directory; refusing to overwrite it")
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"--to {out_dir} exists and is not empty; refusing to overwrite it")
  _check_parent_dir(out_dir, "to")
  if pad not in ("init", "zero"):
    raise ValueError(f"--pad={pad!r}: allowed 'init' or 'zero'")
  for pattern in ([skip] if isinstance(skip, str) else list(skip or ())):
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise ValueError(f"--skip={pattern!r} is not a regular expression ({e})") from None
  validate_train_config(config)
  return state_dict_io.read_state_dict(src)


def check_export_args(workdir: str, out_path: str, *, select=None, overwrite: bool = False):
  """The checks `export_official` runs before loading weights: the --from workdir, --select,
  --to (extension, existing file, parent directory). Returns (source, arch, genome)."""
  from evonas_jax import export_lib
  if state_dict_io._ext(out_path) in state_dict_io.TORCH_EXTS:
    state_dict_io._need_torch(out_path)   # fail now, not after loading the weights
  if os.path.isdir(out_path):
    raise IsADirectoryError(f"--to {out_path} is a directory; expected a .safetensors / .npz / "
                            ".pth file path")
  if os.path.exists(out_path) and not overwrite:
    raise FileExistsError(f"--to {out_path} exists; refusing to overwrite it (pass --overwrite)")
  _check_parent_dir(out_path, "to")
  src = export_lib.open_source(workdir)
  arch = genome = None
  if select is not None:
    arch, genome, _, _, _ = export_lib.select_subnet(src, select)
  return src, arch, genome


def import_official(src: str, out_dir: str, config, *, remap: bool = False, pad: str = "init",
                    skip=(), allow_unmapped: bool = False, log=print) -> dict:
  """Converts `src` for the network of `config`; returns the report's JSON dict."""
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  sd = check_import_args(src, out_dir, config, pad=pad, skip=skip)
  log(f"[evonas_jax] read {len(sd)} arrays from {src}")
  space, task, target, head_cfg = target_variables(config)
  variables, rep = convert_lib.from_official(sd, space, task, target, remap=remap, pad=pad,
                                             skip=skip, allow_unmapped=allow_unmapped,
                                             head_cfg=head_cfg)
  from evonas_jax.checkpoint import save_pytree
  os.makedirs(out_dir, exist_ok=True)
  save_pytree(os.path.join(out_dir, "final"), variables)
  report = {**rep.to_json(), "source": os.path.abspath(src), "task": task,
            "space": space.name, "preset": space.preset, "remap": remap, "pad": pad,
            "skip": list(skip), "params": int(sum(np.size(a) for _, a in
                                                  convert_lib._leaves(variables["params"])))}
  _write_json(os.path.join(out_dir, "convert_report.json"), report)
  log(f"[evonas_jax] wrote {out_dir}/final ({rep.summary()}); report: "
      f"{out_dir}/convert_report.json")
  log(f"[evonas_jax] start a supernet from it: python -m evonas_jax.train --config ... "
      f"--config.init_from={out_dir}")
  return report


def export_official(workdir: str, out_path: str, *, select=None, allow_unmapped: bool = False,
                    overwrite: bool = False, log=print) -> dict:
  """Writes the official-format state dict of a workdir's supernet (or subnet `select`)."""
  from evonas_jax import export_lib
  src, arch, genome = check_export_args(workdir, out_path, select=select, overwrite=overwrite)
  variables, _ = export_lib.load_supernet_variables(src)
  task = (src.train_cfg or {}).get("task", "classification")
  sd, rep = convert_lib.to_official(variables, src.space, task, arch=arch,
                                    allow_unmapped=allow_unmapped,
                                    head_cfg=(src.train_cfg or {}).get("head_cfg"))
  state_dict_io.write_state_dict(out_path, sd, overwrite=overwrite)
  report = {**rep.to_json(), "source": os.path.abspath(workdir), "task": task,
            "space": src.space.name, "preset": src.space.preset,
            "genome": None if genome is None else [int(g) for g in genome],
            "arch": None if arch is None else arch.short(),
            "layout": "official supernet" if arch is None else "official standalone (VSSD_final)"}
  _write_json(out_path + ".report.json", report)
  log(f"[evonas_jax] wrote {out_path} ({len(sd)} keys, {rep.summary()}); report: "
      f"{out_path}.report.json")
  return report
