"""Invalid-input fuzzing: generators of invalid (and some valid) inputs for every public entry
point, and the checker that decides whether each invalid input got a *clear* error.

    fx = Fixtures(tmpdir)                        # small valid files / workdirs, built lazily
    cases = make_cases("genome_evonas", 200, fx) # hypothesis-drawn, reproducible (derandomize)
    results = [check(c) for c in cases]          # Result.good: clear error / accepted / benign

Used by benchmarks/fuzz_inputs.py (the full run, >= 10,000 cases, a JSON report) and
tests/test_fuzz_sample.py (a small CI sample of the same generators).

What counts as clear (`check`). An invalid input must raise one of ValueError, TypeError, an
OSError (FileNotFoundError, FileExistsError, NotADirectoryError, ...), RuntimeError, an absl flag
error (what the CLIs print as "FATAL Flags parsing error"), or end a CLI run (argparse / a
non-zero status with a message on stderr, `ExitStatus`); the exception must be raised by this
project's code or a flag parser, not from deep inside jax / flax / orbax / numpy / json (their
messages name no field); its message must name the field, flag or file (one of the case's
`names`, regular expressions); and a workdir the case came with must still hold every file it
held before, byte for byte. Anything else is an unclear error: a silent acceptance, a message that
names nothing, a KeyError / IndexError / AttributeError, an exception from inside a dependency, a
changed workdir. Valid inputs (every kind has some) must be accepted, so a checker that rejects
everything fails too. Corruptions that leave the data intact (a restore that returns the saved
values) are "benign" and are not counted as invalid inputs.

Kinds (KINDS) and the entry points they feed:
  genome_evonas, genome_autoformer, genome_nb201   SearchSpace / AutoFormerSpace / NB201Space
                                                   .validate + .decode
  arch_evonas, arch_nb201         Arch.from_dict / from_json + SearchSpace.validate_arch;
                                  nb201.str_to_ops (arch strings)
  config_train, config_search, config_finetune, config_convert
                                  --config.<field>=<text> overrides, parsed exactly as the CLIs
                                  parse them (ml_collections config_flags on the real configs/*.py
                                  file), then the validation the CLI runs before any heavy work
  args_export, args_convert, args_prepare
                                  the flags of export / convert / prepare
  idx_file                        truncated / corrupt Fashion-MNIST IDX files (load_fashion_mnist)
  tfds_files                      a prepared array_record dataset with corrupt / missing files
  checkpoint_files                orbax checkpoints (load_pytree, TrainCheckpointer) with corrupt,
                                  truncated or missing files
  latency_table                   latency-table JSON (search's load_device_table(complete=True),
                                  as run_search loads it, + predict)
  search_results                  pareto.json / config.json of a search workdir
                                  (export_lib.plan_export: export's checks before the weights)
  workdir                         missing / file / read-only / foreign / corrupt workdirs
                                  (train_config.check_workdir + workdir.open_workdir; read-only
                                  cases are skipped when running as root)
  nonfinite_images                NaN / inf images in IDX files, mean / std, preprocessing
`cli_cases` draws a sample of the config / flag kinds as real `python -m evonas_jax.<cli>`
commands; `check_cli` runs one (exit status, stderr, last traceback frame, workdir).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG_DIR = os.path.join(ROOT, "evonas_jax") + os.sep
_THIS = os.path.abspath(__file__)
INT32_MAX = 2 ** 31 - 1


# =========================================================================== cases and results
@dataclasses.dataclass
class Case:
  """One input for one entry point.

  run: calls the entry point (raising is the expected outcome for an invalid input).
  names: regular expressions; the error message must match one (the field, flag or file).
  valid: the input is valid and must be accepted.
  workdir: a folder whose files before the case must be unchanged after it.
  same: for corruptions, a predicate on run()'s result: True = the data came back intact
    (the corruption was benign: not an invalid input after all).
  skip: why this case cannot be run here (e.g. root ignores a read-only chmod).
  """
  kind: str
  input: str
  run: Callable[[], Any]
  names: tuple[str, ...] = ()
  valid: bool = False
  workdir: str | None = None
  same: Callable[[Any], bool] | None = None
  skip: str | None = None
  cli: tuple[str, ...] | None = None   # the CLI argv this case corresponds to (for cli_cases)


@dataclasses.dataclass
class Result:
  kind: str
  input: str
  valid: bool
  # clear | accepted | benign | skipped  (good)
  # silent_acceptance | unclear_type | deep_origin | unnamed | workdir_changed | rejected_valid
  # | timeout | harness_error  (bad)
  outcome: str
  message: str = ""
  workdir_checked: bool = False
  workdir_unchanged: bool = True
  seconds: float = 0.0
  traceback_shown: bool = False   # CLI only: a traceback on stderr (ending in project code)

  @property
  def good(self) -> bool:
    return self.outcome in ("clear", "accepted", "benign", "skipped")

  @property
  def counted(self) -> bool:
    """An invalid input that was run (benign corruptions and skipped cases are not)."""
    return not self.valid and self.outcome not in ("benign", "skipped")


class ExitStatus(Exception):
  """An in-process CLI run that ended with a non-zero status (argparse, `return 1`, absl)."""

  def __init__(self, code, stderr: str):
    super().__init__(stderr.strip() or f"exit status {code}")
    self.code = code


def snapshot(path: str | None) -> dict[str, str] | None:
  """{relative path: sha256 (files) or "<dir>"} of everything under `path` (None if absent)."""
  if not path or not os.path.exists(path):
    return None
  out = {}
  if os.path.isfile(path):
    return {".": _sha(path)}
  for dirpath, dirnames, filenames in os.walk(path):
    rel = os.path.relpath(dirpath, path)
    out[rel] = "<dir>"
    for f in filenames:
      p = os.path.join(dirpath, f)
      if not os.path.islink(p):
        out[os.path.join(rel, f)] = _sha(p)
  return out


def _sha(path: str) -> str:
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError as e:
    return f"<unreadable {e.errno}>"


def unchanged(before: dict | None, after: dict | None) -> bool:
  """Every entry that existed before still exists with the same content (new files are fine)."""
  if not before:
    return True
  after = after or {}
  return all(after.get(k) == v for k, v in before.items())


def _origin(e: BaseException) -> str:
  """File of the innermost frame that raised `e`."""
  tb = e.__traceback__
  last = None
  while tb is not None:
    last = tb.tb_frame.f_code.co_filename
    tb = tb.tb_next
  return os.path.abspath(last) if last else ""


def _clear_type(e: BaseException) -> bool:
  from absl import flags
  if isinstance(e, (flags.Error, ExitStatus)):
    return True
  if isinstance(e, (KeyError, IndexError, AttributeError, LookupError, ArithmeticError,
                    AssertionError, NotImplementedError, RecursionError, MemoryError)):
    return False
  return isinstance(e, (ValueError, TypeError, OSError, RuntimeError))


def _from_project(e: BaseException) -> bool:
  from absl import flags
  if isinstance(e, (flags.Error, ExitStatus)):
    return True   # a flag parser's own error: the CLIs print it as a one-line usage error
  o = _origin(e)
  return o.startswith(PKG_DIR) and o != _THIS


def names_match(message: str, names: Sequence[str]) -> bool:
  return any(re.search(n, message, re.IGNORECASE) for n in names)


def field_names(path: str) -> tuple[str, ...]:
  """Regexes naming a config field: its dotted path, or its last part as a word."""
  leaf = path.rsplit(".", 1)[-1]
  return (re.escape(path), r"(?<![A-Za-z0-9_])" + re.escape(leaf) + r"(?![A-Za-z0-9_])")


def file_names(*paths: str) -> tuple[str, ...]:
  out = []
  for p in paths:
    out += [re.escape(p), re.escape(os.path.basename(os.path.normpath(p)))]
  return tuple(out)


@contextlib.contextmanager
def _quiet():
  """Swallows what entry points print (warnings, progress) while a case runs."""
  buf_out, buf_err = io.StringIO(), io.StringIO()
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  with warnings.catch_warnings(), contextlib.redirect_stdout(buf_out), \
      contextlib.redirect_stderr(buf_err):
    warnings.simplefilter("ignore")
    try:
      yield buf_err
    finally:
      root.setLevel(level)


def check(case: Case) -> Result:
  """Runs `case` and classifies what happened (see the module docstring)."""
  if case.skip:
    return Result(case.kind, case.input, case.valid, "skipped", case.skip)
  before = snapshot(case.workdir) if case.workdir else None
  t0 = time.perf_counter()
  err, value = None, None
  try:
    with _quiet():
      value = case.run()
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # noqa: BLE001 - classifying every failure is the point
    err = e
  dt = time.perf_counter() - t0
  after = snapshot(case.workdir) if case.workdir else None
  same_wd = unchanged(before, after)
  res = Result(case.kind, case.input, case.valid, "", workdir_checked=before is not None,
               workdir_unchanged=same_wd, seconds=dt)
  if err is None:
    if case.valid:
      res.outcome = "accepted"
    elif case.same is not None and _safe_same(case.same, value):
      res.outcome = "benign"
    else:
      res.outcome, res.message = "silent_acceptance", f"accepted; returned {_short(value)}"
  else:
    msg = f"{type(err).__name__}: {err}"
    res.message = msg[:600]
    if case.valid:
      res.outcome = "rejected_valid"
    elif not _clear_type(err):
      res.outcome = "unclear_type"
    elif not _from_project(err):
      res.outcome = "deep_origin"
      res.message = (msg[:500] + f" [raised in {_rel(_origin(err))}]")
    elif not names_match(str(err), case.names):
      res.outcome = "unnamed"
    else:
      res.outcome = "clear"
  if res.outcome in ("clear", "accepted") and not same_wd:
    res.outcome = "workdir_changed"
  return res


def _safe_same(fn, value) -> bool:
  try:
    return bool(fn(value))
  except Exception:  # noqa: BLE001 - a result that cannot be compared is not intact
    return False


def _short(value, limit: int = 200) -> str:
  try:
    text = repr(value)
  except Exception:  # noqa: BLE001
    text = f"<{type(value).__name__}>"
  return text if len(text) <= limit else text[:limit] + "..."


def _rel(path: str) -> str:
  m = re.search(r"site-packages/(.*)", path)
  if m:
    return m.group(1)
  return os.path.relpath(path, ROOT) if path.startswith(ROOT) else path


# =========================================================================== hypothesis draws
def draw(strategy, n: int) -> list:
  """Up to `n` examples of `strategy`, the same ones on every run (derandomize=True)."""
  from hypothesis import HealthCheck, Phase, Verbosity, given, settings
  out: list = []

  @settings(max_examples=max(int(n), 1), derandomize=True, database=None,
            phases=[Phase.generate], deadline=None, suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet)
  @given(strategy)
  def collect(x):
    out.append(x)

  collect()
  return out[:n]


# =========================================================================== fixtures
class Fixtures:
  """Small valid files and workdirs the corruptions start from, built lazily under `root`."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    os.makedirs(self.root, exist_ok=True)
    self._n = 0
    self._cache: dict[str, Any] = {}

  def fresh(self, prefix: str = "case") -> str:
    """A new, not yet existing path under root (a case's own workdir / output)."""
    self._n += 1
    return os.path.join(self.root, "cases", f"{prefix}_{self._n:06d}")

  def fresh_dir(self, prefix: str = "case") -> str:
    p = self.fresh(prefix)
    os.makedirs(p)
    return p

  def _once(self, key, build):
    if key not in self._cache:
      self._cache[key] = build()
    return self._cache[key]

  # ---- the missing / wrong-kind paths every path field is tried with
  @property
  def missing(self) -> str:
    return os.path.join(self.root, "does_not_exist", "nothing_here")

  @property
  def a_file(self) -> str:
    def build():
      p = os.path.join(self.root, "a_file.txt")
      with open(p, "w") as f:
        f.write("not a directory\n")
      return p
    return self._once("a_file", build)

  @property
  def empty_dir(self) -> str:
    def build():
      p = os.path.join(self.root, "empty_dir")
      os.makedirs(p, exist_ok=True)
      return p
    return self._once("empty_dir", build)

  # ---- IDX files (a tiny Fashion-MNIST: 12 train, 6 test images)
  @property
  def idx_dir(self) -> str:
    return self._once("idx_dir", lambda: self._write_idx_dir(os.path.join(self.root, "fmnist")))

  def _write_idx_dir(self, d: str, images_dtype=np.uint8) -> str:
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    from evonas_jax.data.sources import FASHION_MNIST_FILES
    for split, n in (("train", 12), ("test", 6)):
      img_f, lbl_f = FASHION_MNIST_FILES[split]
      images = rng.integers(0, 256, (n, 28, 28)).astype(images_dtype)
      labels = rng.integers(0, 10, n).astype(np.uint8)
      with open(os.path.join(d, img_f), "wb") as f:
        f.write(gzip.compress(idx_bytes(images), mtime=0))
      with open(os.path.join(d, lbl_f), "wb") as f:
        f.write(gzip.compress(idx_bytes(labels), mtime=0))
    return d

  @property
  def idx_reference(self):
    def build():
      from evonas_jax.data.sources import load_fashion_mnist
      return load_fashion_mnist(self.idx_dir)
    return self._once("idx_ref", build)

  # ---- a training workdir and a search workdir (configs + pareto.json; no weights)
  @property
  def train_workdir(self) -> str:
    def build():
      d = os.path.join(self.root, "train_workdir")
      os.makedirs(os.path.join(d, "final"), exist_ok=True)
      cfg = load_config("train")
      with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(json.loads(cfg.to_json_best_effort(sort_keys=True)), f, indent=2)
      return d
    return self._once("train_workdir", build)

  @property
  def search_workdir(self) -> str:
    def build():
      d = os.path.join(self.root, "search_workdir")
      os.makedirs(d, exist_ok=True)
      cfg = load_config("search")
      cfg.supernet_workdir = self.train_workdir
      with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(json.loads(cfg.to_json_best_effort(sort_keys=True)), f, indent=2)
      with open(os.path.join(d, "pareto.json"), "w") as f:
        json.dump({"pareto": self.pareto_rows}, f, indent=1)
      return d
    return self._once("search_workdir", build)

  @property
  def pareto_rows(self) -> list[dict]:
    def build():
      from evonas_jax.space import get_space
      sp = get_space("evonas", "tiny")
      rows = []
      for i, g in enumerate(sp.sample(3, 3)):
        rows.append({"genome": [int(x) for x in g], "arch": sp.decode(g).short(),
                     "accuracy": 0.8 - 0.1 * i, "error": 0.2 + 0.1 * i,
                     "latency_ms": 3.0 - i, "macs": 1e6 * (3 - i), "params": 1e4 * (3 - i)})
      return rows
    return self._once("pareto_rows", build)

  # ---- a latency table for evonas/tiny, 10 classes, 16x16x1 (made up, not measured)
  TABLE_SPEC = ("evonas", "tiny", 10, (16, 16, 1))

  @property
  def latency_table(self) -> dict:
    def build():
      from evonas_jax import latency
      from evonas_jax.space import get_space
      name, preset, num_classes, shape = self.TABLE_SPEC
      sp = get_space(name, preset)
      rng = np.random.default_rng(0)
      entries = {"stem": 0.05, "head": 0.02, "dispatch_overhead": 0.01}
      for s in range(1, sp.num_stages):
        entries[f"downsample{s}"] = 0.03
      for s, c in enumerate(sp.dims):
        entries[f"stage{s}"] = {
            "mixer": {k: float(rng.uniform(0.01, 0.1)) for k, *_ in latency._mixer_keys(sp, s)},
            "mlp": {str(int(c * r)): float(rng.uniform(0.01, 0.1)) for r in sp.mlp_choices}}
      meta = {"backend": "xla", "device": "cpu (fuzz fixture)",
              **latency.space_meta(sp, num_classes, shape, 1), "warmup": 1, "runs": 1,
              "statistic": "p50"}
      return {"meta": meta, "entries": entries}
    return self._once("latency_table", build)

  # ---- orbax checkpoints: a StandardCheckpointer save and a TrainCheckpointer with 2 steps
  @staticmethod
  def ckpt_tree(step: int = 0) -> dict:
    r = np.arange(64, dtype=np.float32) + step
    return {"params": {"w": r.reshape(8, 8), "b": r[:8] * 2},
            "batch_stats": {"mean": r[:4] - 1}}

  @property
  def pytree_ckpt(self) -> str:
    def build():
      from evonas_jax.checkpoint import save_pytree
      p = os.path.join(self.root, "pytree_ckpt")
      with _quiet():
        save_pytree(p, self.ckpt_tree())
      return p
    return self._once("pytree_ckpt", build)

  @property
  def train_ckpt(self) -> str:
    def build():
      from evonas_jax.checkpoint import TrainCheckpointer
      p = os.path.join(self.root, "train_ckpt")
      with _quiet():
        ck = TrainCheckpointer(p, keep=2, async_save=False)
        for step in (1, 2):
          ck.save(step, self.ckpt_tree(step), {"step": step}, force=True)
        ck.close()
      return p
    return self._once("train_ckpt", build)

  # ---- a prepared TFDS (array_record) dataset: digits, 100 validation images
  @property
  def tfds_dir(self) -> str:
    def build():
      from evonas_jax.data import tfds_prepare
      p = os.path.join(self.root, "tfds")
      with _quiet():
        tfds_prepare.prepare("digits", p, val_size=100)
      return p
    return self._once("tfds_dir", build)

  @property
  def tfds_reference(self) -> dict:
    return self._once("tfds_ref", lambda: read_tfds_splits(self.tfds_dir))

  # ---- a state dict for convert --from
  @property
  def state_dict_npz(self) -> str:
    def build():
      p = os.path.join(self.root, "official.npz")
      np.savez(p, **{"patch_embed.proj.weight": np.zeros((16, 1, 4, 4), np.float32)})
      return p
    return self._once("npz", build)

  @property
  def is_root(self) -> bool:
    """Whether a read-only chmod is ignored here (root): those cases are reported as skipped."""
    def probe():
      d = os.path.join(self.root, "ro_probe")
      os.makedirs(d, exist_ok=True)
      os.chmod(d, 0o555)
      try:
        with open(os.path.join(d, "x"), "w") as f:
          f.write("x")
        return True
      except OSError:
        return False
      finally:
        os.chmod(d, 0o755)
    return self._once("is_root", probe)


def idx_bytes(a: np.ndarray) -> bytes:
  """An array as IDX bytes (big-endian header + data)."""
  codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
           np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
  head = bytes([0, 0, codes[a.dtype], a.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in a.shape)
  return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def read_tfds_splits(tfds_dir: str) -> dict:
  """{split: (images, labels)} of the prepared digits dataset, read record by record."""
  from evonas_jax.data import tfds_source
  out = {}
  for split in ("train", "validation", "test"):
    from evonas_jax.data import pipeline
    s = tfds_source.open_split("evonas_digits", split, tfds_dir)
    # The read path training uses (data.pipeline._read), all records.
    images, labels = pipeline._read(s.source, np.arange(len(s.source)), s.image_key, s.label_key)
    out[split] = (np.asarray(images), np.asarray(labels))
  return out


# =========================================================================== CLI config parsing
CLI_CONFIGS = {"train": "configs/ci_tiny.py", "search": "configs/search_quickstart.py",
               "finetune": "configs/finetune_quickstart.py", "convert": "configs/ci_tiny.py"}
CLI_MODULES = {"train": "evonas_jax/train.py", "search": "evonas_jax/search.py",
               "finetune": "evonas_jax/finetune/__main__.py",
               "convert": "evonas_jax/convert/__main__.py", "export": "evonas_jax/export.py",
               "prepare": "evonas_jax/prepare.py"}


def load_config(cli: str):
  """The config file `cli`'s CLI samples use, loaded as config_flags loads it."""
  return parse_config(cli, [])


def _uses_usage_parser(cli: str) -> bool:
  # A CLI that passes flags_parser=train_config.config_flags_parser to app.run turns an unknown
  # --config.<field> into a one-line usage error; the others show ml_collections' traceback.
  with open(os.path.join(ROOT, CLI_MODULES[cli])) as f:
    return "config_flags_parser" in f.read()


def parse_config(cli: str, overrides: Sequence[str]):
  """configs/<cli config> with `overrides` ("--config.x=v"), parsed as `python -m` parses them.

  Raises what the CLI's flag parsing raises: an absl flags.Error for a bad value (printed by
  absl as "FATAL Flags parsing error"), ml_collections' AttributeError for an unknown field
  (a traceback), or, for CLIs using train_config.config_flags_parser, ExitStatus.
  """
  from absl import flags
  from ml_collections import config_flags
  argv = ["prog", f"--config={os.path.join(ROOT, CLI_CONFIGS[cli])}", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  if _uses_usage_parser(cli):
    from evonas_jax.train_config import config_flags_parser
    err = io.StringIO()
    try:
      with contextlib.redirect_stderr(err):
        config_flags_parser(argv, flag_values=fv)
    except SystemExit as e:
      raise ExitStatus(e.code, err.getvalue()) from None
  else:
    fv(argv)
  return fv.config


# =========================================================================== search spaces
def _st():
  from hypothesis import strategies as st
  return st


_BIG_INTS = (2 ** 31, 2 ** 31 - 1 + 2 ** 31, 2 ** 32, 2 ** 32 + 1, 2 ** 63, 2 ** 64 + 3,
             -2 ** 31 - 1, -2 ** 63 - 5, 10 ** 30)


def _bad_element(ub: int):
  """Strategy: one gene value that is never valid for a gene with `ub` choices."""
  st = _st()
  return st.one_of(
      st.integers(max_value=-1), st.integers(min_value=ub, max_value=ub + 1000),
      st.sampled_from(_BIG_INTS),
      st.floats(allow_nan=True, allow_infinity=True).filter(
          lambda x: not math.isfinite(x) or not float(x).is_integer()),
      st.text(max_size=4), st.none(), st.lists(st.integers(0, 3), max_size=3),
      st.dictionaries(st.text(max_size=2), st.integers(0, 3), max_size=2),
      st.sampled_from(["1", "0", b"1", 1j]))


def _genome_strategy(ub: Sequence[int], depth_slices: Sequence[slice] = ()):
  """(description, genome object) pairs: valid genomes and many ways of breaking one."""
  st = _st()
  L = len(ub)
  base = st.tuples(*[st.integers(0, int(u) - 1) for u in ub]).map(list)

  def fix_depth(g):   # a valid base genome has >= 1 active bit per stage
    for sl in depth_slices:
      if not any(g[sl]):
        g[sl.start] = 1
    return g

  base = base.map(fix_depth)
  pos = st.integers(0, L - 1)
  ops = [
      st.tuples(st.just("valid"), base),
      st.tuples(st.just("length"), base, st.integers(0, 3 * L).filter(lambda k: k != L)),
      st.tuples(st.just("replace"), base, st.lists(pos.flatmap(
          lambda i: st.tuples(st.just(i), _bad_element(int(ub[i])))), min_size=1, max_size=2)),
      st.tuples(st.just("integral_float"), base, pos),
      st.tuples(st.just("container"), base, st.sampled_from(
          ["tuple", "int8", "int64", "uint64", "float32", "nested", "scalar", "string", "dict",
           "none", "bool", "str_array", "set", "2d", "object"])),
  ]
  if depth_slices:
    ops.append(st.tuples(st.just("empty_stage"), base, st.integers(0, len(depth_slices) - 1)))
  return st.one_of(*ops)


def _build_genome(op, ub, depth_slices):
  what = op[0]
  g = list(op[1])
  if what == "valid":
    return "valid", g
  if what == "length":
    k = op[2]
    return f"length {k}", (g * 3)[:k]
  if what == "replace":
    for i, v in op[2]:
      g[i] = v
    return f"replace genes {[i for i, _ in op[2]]}", g
  if what == "integral_float":
    g[op[2]] = float(g[op[2]])
    return f"float gene {op[2]}", g
  if what == "empty_stage":
    sl = depth_slices[op[2]]
    g[sl] = [0] * (sl.stop - sl.start)
    return f"empty stage {op[2] + 1}", g
  c = op[2]
  conv = {"tuple": tuple, "int8": lambda x: np.asarray(x, np.int8),
          "int64": lambda x: np.asarray(x, np.int64), "uint64": lambda x: np.asarray(x, np.uint64),
          "float32": lambda x: np.asarray(x, np.float32), "nested": lambda x: [x],
          "scalar": lambda x: x[0], "string": lambda x: ",".join(map(str, x)),
          "dict": lambda x: dict(enumerate(x)), "none": lambda x: None,
          "bool": lambda x: np.asarray(x, bool), "str_array": lambda x: np.asarray(x).astype(str),
          "set": set, "2d": lambda x: np.asarray([x, x]), "object": lambda x: np.asarray(x, object)}
  return f"as {c}", conv[c](g)


def genome_ok(g, ub, depth_slices=(), integral_floats=True) -> bool:
  """Oracle: is `g` a valid genome (independent of the code under test)."""
  if isinstance(g, np.ndarray):
    if g.ndim != 1 or g.dtype == bool or g.dtype.kind in "USVO" and g.dtype != object:
      return False
    items = g.tolist()
  elif isinstance(g, (list, tuple)):
    items = list(g)
  else:
    return False
  if len(items) != len(ub):
    return False
  vals = []
  for v in items:
    if isinstance(v, bool):
      return False
    if isinstance(v, (int, np.integer)):
      vals.append(int(v))
    elif integral_floats and isinstance(v, (float, np.floating)) and math.isfinite(v) \
        and float(v).is_integer():
      vals.append(int(v))
    else:
      return False
  if any(not 0 <= v < int(u) for v, u in zip(vals, ub)):
    return False
  return all(any(vals[sl]) for sl in depth_slices)


GENOME_NAMES = (r"genome", r"\bgenes?\b", r"depth bits")


def _space_genome_cases(kind, spaces, n, fx):
  cases = []
  per = max(n // len(spaces), 1)
  for label, sp, integral in spaces:
    ub = [int(u) for u in sp.upper_bounds]
    slices = [sp.depth_slice(s) for s in range(sp.num_stages)] if hasattr(sp, "depth_slice") else []
    for op in draw(_genome_strategy(ub, slices), per):
      desc, g = _build_genome(op, ub, slices)
      valid = genome_ok(g, ub, slices, integral)
      cases.append(Case(kind, f"{label} {desc}: {_short(g, 160)}",
                        (lambda sp=sp, g=g: (sp.validate(g), sp.decode(g))),
                        GENOME_NAMES, valid=valid))
  return cases


def gen_genome_evonas(n, fx):
  from evonas_jax.space import get_space
  return _space_genome_cases("genome_evonas", [
      ("evonas/tiny", get_space("evonas", "tiny"), True),
      ("hybrid/small", get_space("hybrid", "small"), True)], n, fx)


def gen_genome_autoformer(n, fx):
  from evonas_jax.space.autoformer import get_autoformer_space
  return _space_genome_cases("genome_autoformer", [
      (f"autoformer-{s}", get_autoformer_space(s), True) for s in ("T", "S", "B")], n, fx)


def gen_genome_nb201(n, fx):
  from evonas_jax.space.nb201 import get_nb201_space
  return _space_genome_cases("genome_nb201", [("nb201", get_nb201_space(), False)], n, fx)


# ---- Arch dicts / JSON (evonas, hybrid)
_ARCH_FIELDS = ("mlp_ratio", "d_state", "expand", "depth", "block_type")


def arch_ok(d, sp) -> bool:
  """Oracle: does the dict `d` describe an arch of space `sp` (SearchSpace.validate_arch)."""
  if not isinstance(d, dict) or any(f not in d for f in _ARCH_FIELDS):
    return False
  n = sp.num_stages

  def seq(v):
    return isinstance(v, (list, tuple)) and len(v) == n

  if not all(seq(d[f]) for f in _ARCH_FIELDS):
    return False

  def num(v, integral=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return None
    if integral and not float(v).is_integer():
      return None
    return int(v) if integral else float(v)

  for s in range(n):
    r, ds, ex = num(d["mlp_ratio"][s]), num(d["d_state"][s], True), num(d["expand"][s])
    if r is None or ds is None or ex is None or r not in sp.mlp_choices:
      return False
    if s in sp.ssm_stages:
      if ds not in sp.d_state_choices or ex not in sp.expand_choices:
        return False
    elif (ex, ds) != tuple(sp.stage4_ssm):
      return False
    bits = d["depth"][s]
    if not isinstance(bits, (list, tuple)) or len(bits) != sp.max_depths[s]:
      return False
    vals = [num(b, True) if not isinstance(b, bool) else int(b) for b in bits]
    if any(v not in (0, 1) for v in vals) or not any(vals):
      return False
    t = d["block_type"][s]
    if not isinstance(t, str) or t not in (sp.type_choices if sp.searchable_types
                                           else (sp.default_types[s],)):
      return False
  return True


def _arch_strategy(n_stages):
  st = _st()
  field = st.sampled_from(_ARCH_FIELDS)
  stage = st.integers(0, n_stages - 1)
  junk = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 600),
                   st.text(max_size=6), st.none(), st.booleans(), st.sampled_from(
                       ["2.0", "vssd", "attention", "ss2d", [], {}, [1], 2.5, 16.5, -1, 0]))
  return st.one_of(
      st.tuples(st.just("valid")),
      st.tuples(st.just("drop"), field),
      st.tuples(st.just("field"), field, junk),
      st.tuples(st.just("stages"), field, st.integers(0, 8).filter(lambda k: k != n_stages)),
      st.tuples(st.just("value"), field, stage, junk),
      st.tuples(st.just("bit"), stage, st.integers(0, 8), junk),
      st.tuples(st.just("bits"), stage, st.integers(0, 10)),
      st.tuples(st.just("empty"), stage),
      st.tuples(st.just("extra"), st.text(min_size=1, max_size=5)),
      st.tuples(st.just("json"), st.sampled_from(["ok", "truncate", "list", "garbage", "null"]),
                st.integers(0, 300)),
  )


def _build_arch(op, base: dict):
  import copy
  d = copy.deepcopy(base)
  what = op[0]
  if what == "valid":
    return "valid", d
  if what == "drop":
    d.pop(op[1])
    return f"no {op[1]}", d
  if what == "field":
    d[op[1]] = op[2]
    return f"{op[1]} = {op[2]!r}", d
  if what == "stages":
    d[op[1]] = (list(d[op[1]]) * 3)[:op[2]]
    return f"{op[1]} with {op[2]} stages", d
  if what == "value":
    d[op[1]][op[2]] = op[3]
    return f"{op[1]}[{op[2]}] = {op[3]!r}", d
  if what == "bit":
    s, i = op[1], op[2] % len(d["depth"][op[1]])
    d["depth"][s][i] = op[3]
    return f"depth[{s}][{i}] = {op[3]!r}", d
  if what == "bits":
    s = op[1]
    d["depth"][s] = ([1] * 12)[:op[2]]
    return f"depth[{s}] has {op[2]} bits", d
  if what == "empty":
    d["depth"][op[1]] = [0] * len(d["depth"][op[1]])
    return f"depth[{op[1]}] all 0", d
  if what == "extra":
    d["x_" + op[1]] = 1
    return "extra field", d
  raise AssertionError(what)


ARCH_NAMES = tuple(_ARCH_FIELDS) + (r"\barch\b", r"stage \d", r"depth bits", "block types")


def gen_arch_evonas(n, fx):
  from evonas_jax.space import Arch, get_space
  cases = []
  spaces = [("evonas/tiny", get_space("evonas", "tiny")), ("hybrid/tiny", get_space("hybrid", "tiny"))]
  for label, sp in spaces:
    bases = [sp.decode(g).to_dict() for g in sp.sample(1, 4)]
    for k, op in enumerate(draw(_arch_strategy(sp.num_stages), n // len(spaces))):
      base = bases[k % len(bases)]
      if op[0] == "json":
        text = json.dumps(base)
        form, cut = op[1], op[2]
        text = {"ok": text, "truncate": text[:cut % max(len(text) - 1, 1)], "list": "[1, 2]",
                "garbage": "{mlp_ratio: [", "null": "null"}[form]
        valid = form == "ok"
        cases.append(Case("arch_evonas", f"{label} json {form}: {text[:120]!r}",
                          (lambda sp=sp, t=text: sp.validate_arch(Arch.from_json(t))),
                          ARCH_NAMES + ("json",), valid=valid))
        continue
      desc, d = _build_arch(op, base)
      cases.append(Case("arch_evonas", f"{label} {desc}", (
          lambda sp=sp, d=d: sp.validate_arch(Arch.from_dict(d))), ARCH_NAMES,
          valid=arch_ok(d, sp)))
  return cases


# ---- NB201 arch strings
def nb201_str_ok(s) -> bool:
  """Oracle for nb201.str_to_ops (its documented, lenient grammar)."""
  from evonas_jax.space.nb201 import NASLIB_OPS
  if not isinstance(s, str):
    return False
  nodes = s.strip("|").split("|+|")
  if len(nodes) != 3:
    return False
  for j, node in enumerate(nodes, start=1):
    toks = node.strip("|").split("|")
    if len(toks) != j:
      return False
    ks = []
    for tok in toks:
      m = re.fullmatch(r"(.*)~([0-9]+)", tok)
      if not m or m.group(1) not in NASLIB_OPS or not 0 <= int(m.group(2)) < j:
        return False
      ks.append(int(m.group(2)))
    if len(set(ks)) != len(ks):
      return False
  return True


def _nb201_str_strategy():
  st = _st()
  from evonas_jax.space.nb201 import NASLIB_OPS
  tok_junk = st.one_of(st.text(max_size=6), st.sampled_from(list(NASLIB_OPS) + [
      "conv", "nor_conv_5x5", "", "~", "~0", "none~", "none~x", "none~-1", "none~9", "none~0~1",
      "skip_connect ~0", "none~١"]))
  return st.one_of(
      st.tuples(st.just("valid"), st.integers(0, 15624)),
      st.tuples(st.just("token"), st.integers(0, 15624), st.integers(0, 5), tok_junk),
      st.tuples(st.just("k"), st.integers(0, 15624), st.integers(0, 5), st.integers(-3, 9)),
      st.tuples(st.just("drop_node"), st.integers(0, 15624), st.integers(0, 2)),
      st.tuples(st.just("extra_node"), st.integers(0, 15624)),
      st.tuples(st.just("text"), st.text(max_size=40)),
      st.tuples(st.just("type"), st.sampled_from([None, 3, ["a"], b"|none~0|", 1.5])),
      st.tuples(st.just("space"), st.integers(0, 15624)),
  )


def _build_nb201_str(op, all_strs):
  what = op[0]
  if what in ("text", "type"):
    return what, op[1]
  s = all_strs[op[1] % len(all_strs)]
  if what == "valid":
    return "valid", s
  if what == "space":
    return "whitespace", " " + s + " "
  nodes = s.strip("|").split("|+|")
  toks = [node.split("|") for node in nodes]
  flat = [(j, i) for j in range(3) for i in range(len(toks[j]))]
  if what == "token":
    j, i = flat[op[2] % len(flat)]
    toks[j][i] = op[3]
  elif what == "k":
    j, i = flat[op[2] % len(flat)]
    toks[j][i] = toks[j][i].split("~")[0] + f"~{op[3]}"
  elif what == "drop_node":
    toks.pop(op[2])
  elif what == "extra_node":
    toks.append(["none~0", "none~1", "none~2", "none~3"])
  out = "+".join("|" + "|".join(t) + "|" for t in toks)
  return what, out


def gen_arch_nb201(n, fx):
  from evonas_jax.space import nb201
  sp = nb201.get_nb201_space()
  all_strs = [nb201.ops_to_str(g) for g in sp.sample(0, 64)]
  cases = []
  for op in draw(_nb201_str_strategy(), n):
    desc, s = _build_nb201_str(op, all_strs)
    cases.append(Case("arch_nb201", f"{desc}: {_short(s, 120)}",
                      (lambda s=s: nb201.str_to_ops(s)), ("arch_str", "nb201"),
                      valid=nb201_str_ok(s)))
  return cases


# =========================================================================== config / flag specs
@dataclasses.dataclass(frozen=True)
class Field:
  """The allowed values of one config field or flag: the oracle the fuzzer judges inputs by.

  type: "int" | "float" | "bool" | "choice" | "text" | "custom".
  lo / hi (with open_lo / open_hi): bounds of int / float fields (ints default to <= INT32_MAX;
    floats must always be finite). choices: allowed values of a "choice" field.
  when: the field only matters when when(cfg) holds (oracle skips it otherwise).
  context: overrides that make it matter (added to every case that targets the field).
  ok: an extra validity predicate ok(value, cfg) (cross-field rules).
  gen: custom candidate strings: gen(fx) -> strategy of (text, valid or None = use the oracle).
  """
  path: str
  type: str
  lo: float | None = None
  hi: float | None = None
  open_lo: bool = False
  open_hi: bool = False
  choices: tuple = ()
  when: Callable | None = None
  context: tuple[str, ...] = ()
  ok: Callable | None = None
  gen: Callable | None = None
  none_ok: bool = False   # None (the flag's default: "not given") is valid


def _float_finite(v) -> bool:
  """A real number (not a bool) that is finite as a float (a huge int is not)."""
  if not _is_real(v):
    return False
  try:
    return math.isfinite(v)
  except OverflowError:
    return False


def _get(cfg, path: str):
  v = cfg
  for p in path.split("."):
    v = v[p]
  return v


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def field_ok(f: Field, cfg) -> bool:
  if f.when is not None and not f.when(cfg):
    return True
  try:
    v = _get(cfg, f.path) if hasattr(cfg, "keys") else cfg[f.path]
  except (KeyError, AttributeError):
    return True
  if v is None and f.none_ok:
    return f.ok is None or bool(f.ok(v, cfg))
  if f.type == "int":
    hi = INT32_MAX if f.hi is None else f.hi
    good = _is_int(v) and (f.lo is None or v >= f.lo) and v <= hi
  elif f.type == "float":
    good = _is_real(v) and math.isfinite(v) and (
        f.lo is None or (v > f.lo if f.open_lo else v >= f.lo)) and (
        f.hi is None or (v < f.hi if f.open_hi else v <= f.hi))
  elif f.type == "bool":
    good = isinstance(v, bool)
  elif f.type == "choice":
    good = any(v == c and type(v) is type(c) for c in f.choices)
  elif f.type == "text":
    good = isinstance(v, str) and bool(v)
  else:
    good = True
  return good and (f.ok is None or bool(f.ok(v, cfg)))


_JUNK = ("", " ", "abc", "1.5", "-0.5", "nan", "inf", "-inf", "1e999", "0x10", "1e3", "None",
         "True", "False", "[1, 2]", "(1,)", "{}", "1,2", "--", "१२", "1_000", "+3", "00", "-0",
         "2**40", "1/2")


def _argv_text():
  st = _st()
  # Text a shell can pass: no NUL, no surrogates / control characters.
  return st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=10)


def candidates(f: Field, fx):
  """Strategy of (text, forced validity or None) candidate values for `f`."""
  st = _st()
  if f.gen is not None:
    return f.gen(fx)
  junk = st.one_of(st.sampled_from(_JUNK), _argv_text())
  opts = [junk]
  if f.type == "int":
    hi = INT32_MAX if f.hi is None else int(f.hi)
    lo = -2 ** 40 if f.lo is None else int(f.lo)
    if f.lo is not None:
      opts.append(st.integers(lo - 10 ** 6, lo - 1).map(str))
      opts.append(st.integers(lo - 3, lo - 1).map(str))
    opts.append(st.integers(hi + 1, hi + 2 ** 70).map(str))
    opts.append(st.integers(lo, min(hi, lo + 64)).map(str))
  elif f.type == "float":
    if f.lo is not None:
      opts.append(st.floats(max_value=f.lo, exclude_max=not f.open_lo, allow_nan=False).map(repr))
    if f.hi is not None:
      opts.append(st.floats(min_value=f.hi, exclude_min=not f.open_hi, allow_nan=False).map(repr))
    lo = f.lo if f.lo is not None else -1e6
    hi = f.hi if f.hi is not None else lo + 1e3
    opts.append(st.floats(lo, hi, exclude_min=f.open_lo, exclude_max=f.open_hi).map(repr))
    opts.append(st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999", "NaN"]))
  elif f.type == "bool":
    opts.append(st.sampled_from(["maybe", "2", "-1", "yes", "no", "on", "off", "ture", "None",
                                 "[]", "true", "False", "1", "0", "t", "f"]))
  elif f.type == "choice":
    ch = [str(c) for c in f.choices]
    opts += [st.sampled_from(ch), st.sampled_from(ch).map(str.upper),
             st.sampled_from(ch).map(lambda c: c + " "), st.sampled_from(ch).map(lambda c: c[:-1]),
             st.sampled_from(ch).map(lambda c: c + "x"), st.sampled_from(ch).map(lambda c: " " + c)]
  return st.tuples(st.one_of(*opts), st.none())


def _paths(fx, valid: dict[str, str], invalid: dict[str, str]):
  """Strategy over named fixture paths: (path, validity)."""
  st = _st()
  items = [(k, True) for k in valid] + [(k, False) for k in invalid]
  table = {**valid, **invalid}
  return st.sampled_from(items).map(lambda kv: (_resolve_path(fx, table[kv[0]]), kv[1]))


def _resolve_path(fx, key: str) -> str:
  return {"missing": fx.missing, "file": fx.a_file, "empty": fx.empty_dir,
          "train": fx.train_workdir, "search": fx.search_workdir, "idx": fx.idx_dir,
          "ckpt": fx.pytree_ckpt, "": ""}.get(key, key)


def _tuple_text(values) -> str:
  return "(" + ", ".join(str(v) for v in values) + ("," if len(values) == 1 else "") + ")"


def _stages_gen(fx):
  st = _st()
  from evonas_jax.pst import OFFICIAL_STAGES
  names = [s[0] for s in OFFICIAL_STAGES]
  ordered = st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True).map(
      lambda xs: sorted(xs, key=names.index))
  return st.one_of(
      ordered.map(lambda xs: ("(" + ", ".join(repr(x) for x in xs) + ",)", True)),
      ordered.filter(lambda xs: len(xs) > 1).map(
          lambda xs: ("(" + ", ".join(repr(x) for x in reversed(xs)) + ",)", False)),
      st.lists(st.sampled_from(names + ["maxnet2", "MAXNET", "depth ", "mlp", ""]), min_size=1,
               max_size=3).map(lambda xs: ("(" + ", ".join(repr(x) for x in xs) + ",)", None)),
      st.sampled_from([("3", False), ("(maxnet,)", False), ("(1, 2)", False), ("maxnet", True),
                       ("('maxnet', 'depth')", True), ("(None,)", False)]))


def _stages_ok(v, cfg) -> bool:
  from evonas_jax.pst import OFFICIAL_STAGES
  names = [s[0] for s in OFFICIAL_STAGES]
  if not isinstance(v, (tuple, list)) or not all(isinstance(x, str) and x in names for x in v):
    return False
  idx = [names.index(x) for x in v]
  return idx == sorted(idx)


def _genome_text_gen(space_name="evonas", preset="tiny"):
  def gen(fx):
    st = _st()
    from evonas_jax.space import get_space
    sp = get_space(space_name, preset)
    ub = [int(u) for u in sp.upper_bounds]
    slices = [sp.depth_slice(s) for s in range(sp.num_stages)]

    def text(op):
      desc, g = _build_genome(op, ub, slices)
      if isinstance(g, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(
          v, bool) for v in g):
        # () is the default: no fixed subnet
        return _tuple_text(g), len(g) == 0 or genome_ok(list(g), ub, slices)
      return _short(g, 300), False
    return _genome_strategy(ub, slices).map(text)
  return gen


def select_ok(text, rows, space) -> bool:
  """Oracle for --select / config.select (export_lib.select_subnet's documented grammar):
  a pareto row index, a genome as a comma list of ints, or a budget FIELD OP NUMBER [& ...]
  that some row meets. rows: the pareto rows (None for a training workdir)."""
  if not isinstance(text, str):
    return False
  if any(op in text for op in ("<", ">", "==")):
    if not rows:
      return False
    import operator as o
    fns = {"<=": o.le, "<": o.lt, ">=": o.ge, ">": o.gt, "==": o.eq}
    clauses = [c for c in re.split(r"\s*(?:&&?|\band\b)\s*", text.strip()) if c]
    if not clauses:
      return False
    fields = {k for r in rows for k, v in r.items() if _is_real(v)}
    parsed = []
    for c in clauses:
      m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*(\S+)\s*", c)
      if not m or m.group(1) not in fields:
        return False
      try:
        v = float(m.group(3))
      except ValueError:
        return False
      if not math.isfinite(v):
        return False
      parsed.append((m.group(1), fns[m.group(2)], v))
    return any(all(k in r and fn(float(r[k]), v) for k, fn, v in parsed) for r in rows)
  parts = [p.strip() for p in text.strip().strip("[]").split(",")]
  try:
    vals = [int(p) for p in parts if p]
  except ValueError:
    return False
  if not vals:
    return False
  if len(parts) == 1:
    return rows is not None and 0 <= vals[0] < len(rows)
  ub = [int(u) for u in space.upper_bounds]
  return genome_ok(vals, ub, [space.depth_slice(s) for s in range(space.num_stages)])


def _select_gen(fx):
  """Candidate --select / config.select texts (judged by `select_ok`)."""
  st = _st()
  from evonas_jax.space import get_space
  sp = get_space("evonas", "tiny")
  ub = [int(u) for u in sp.upper_bounds]
  slices = [sp.depth_slice(s) for s in range(sp.num_stages)]

  def genome_text(op):
    _, g = _build_genome(op, ub, slices)
    if isinstance(g, (list, tuple)):
      return ",".join(str(v) for v in g)
    return str(g)

  clause = st.tuples(st.sampled_from(["latency_ms", "macs", "params", "error", "accuracy",
                                      "latency", "flops", "", "genome", "arch"]),
                     st.sampled_from(["<=", "<", ">=", ">", "==", "=", "=<", "!="]),
                     st.one_of(st.sampled_from(["1e9", "0", "-1", "nan", "inf", "abc", "",
                                                "1e-9", "3.0", "2"]),
                               st.floats(-10, 1e7, allow_nan=False).map(repr))).map(
                                   lambda c: "".join(c))
  return st.one_of(
      st.integers(-5, 8).map(str), _genome_strategy(ub, slices).map(genome_text),
      st.sampled_from(["", "abc", "1.5", "[0]", "0,", " 2 ", "1,2,3", "nan", "0 1"]),
      clause, st.lists(clause, min_size=2, max_size=3).map(" & ".join),
      _argv_text()).map(lambda t: (t, None))


def _data_fields(prefix: str = "data.") -> list[Field]:
  from evonas_jax.data import config as dc
  from evonas_jax.data import sources
  p = prefix

  def tfds(cfg):
    return _get(cfg, p + "source") == "tfds"

  def val_ok(v, cfg):
    if isinstance(v, bool) or not _is_real(v) or v < 0:
      return False
    if not _is_int(v) and not 0 < v < 1:
      return False
    src = _get(cfg, p + "source")
    n = sources.DIGITS_TRAIN_SIZE if src == "digits" else 60000 if src == "fashion_mnist" else None
    if n is None:
      return True
    count = int(round(v * n)) if not _is_int(v) else int(v)
    return count < n and v <= INT32_MAX

  def per_channel(positive):
    def ok(v, cfg):
      vals = tuple(v) if isinstance(v, (tuple, list)) else (v,)
      ch = _get(cfg, p + "channels")
      if not vals or len(vals) not in (1, ch if ch in (1, 3) else 1):
        return False
      return all(_is_real(x) and math.isfinite(x) and (x > 0 or not positive) for x in vals)
    return ok

  def tensor_text(f):
    st = _st()
    num = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999", "0", "-0.5",
                                     "0.5", "abc", "''", "None", "True"]))
    return st.one_of(num.map(lambda s: (s, None)), st.lists(num, min_size=0, max_size=4).map(
        lambda xs: ("(" + ", ".join(xs) + ("," if len(xs) == 1 else "") + ")", None)))

  def path_or_tfds(fx):
    st = _st()
    return st.sampled_from([(fx.missing, None), (fx.a_file, None), (fx.empty_dir, None)])

  return [
      Field(p + "source", "choice", choices=dc.SOURCES),
      Field(p + "name", "custom", when=tfds,
            ok=lambda v, cfg: isinstance(v, str) and bool(v) and os.path.isdir(os.path.join(
                _get(cfg, p + "tfds_data_dir") or dc.default_tfds_data_dir(), v.split("/")[0]
                .split(":")[0]))),
      Field(p + "tfds_data_dir", "custom", when=tfds, context=(
          f"--config.{p}source=tfds", f"--config.{p}name=evonas_digits"), gen=path_or_tfds),
      Field(p + "val_size", "custom", ok=val_ok, gen=lambda fx: _st().one_of(
          _st().sampled_from(["-1", "0.5", "1.0", "1.5", "1437", "1438", "5000", "nan", "inf",
                              "'abc'", "abc", "(1,)", "True", "0", "0.0", "1e-9", "2**31",
                              "10**20", "-0.1"]),
          _st().integers(-10, 70000).map(str), _st().floats(-2, 2).map(repr)).map(
              lambda s: (s, None))),
      Field(p + "allow_fallback", "bool"), Field(p + "random_flip", "bool"),
      Field(p + "image_size", "int", lo=1),
      Field(p + "channels", "choice", choices=dc.CHANNELS),
      Field(p + "crop_padding", "int", lo=0,
            ok=lambda v, cfg: _is_int(v) and v <= _get(cfg, p + "image_size")),
      Field(p + "num_threads", "int", lo=0), Field(p + "prefetch", "int", lo=0),
      Field(p + "cache_max_mb", "int", lo=0),
      Field(p + "image_key", "text"), Field(p + "label_key", "text"),
      Field(p + "train_split", "text"), Field(p + "val_split", "text"),
      Field(p + "test_split", "text"),
      Field(p + "mean", "custom", ok=per_channel(False), gen=tensor_text),
      Field(p + "std", "custom", ok=per_channel(True), gen=tensor_text),
  ]


def _some_dir(v) -> bool:
  return isinstance(v, str) and bool(v) and os.path.isdir(v)


def _dir_ok(v, cfg=None) -> bool:
  return isinstance(v, str) and (v == "" or os.path.isdir(v))


def train_fields() -> list[Field]:
  from evonas_jax import train_config as tc
  from evonas_jax.parallel import DATA_SHARDING_MODES
  from evonas_jax.pst import SAMPLING_RULES
  from evonas_jax.steps import COMPUTE_DTYPES
  from evonas_jax.task_runtime import TASK_NAMES
  teacher = ("--config.teacher.source=train",)

  def uses_teacher(cfg):
    return cfg.teacher.source in ("train", "checkpoint")

  def path_gen(fx):
    return _paths(fx, {"train": "train", "ckpt": "ckpt"}, {"missing": "missing", "file": "file"})

  f = [
      Field("seed", "int", lo=0),
      Field("space", "choice", choices=tc.SPACES), Field("preset", "choice", choices=tc.PRESETS),
      # This base config's data is a classification config: a dense task does not fit it.
      Field("task", "choice", choices=("classification",),
            gen=lambda fx: _st().one_of(_st().sampled_from(TASK_NAMES).map(
                lambda t: (t, t == "classification")), candidates(Field(
                    "task", "choice", choices=TASK_NAMES), fx))),
      Field("compute_dtype", "choice", choices=COMPUTE_DTYPES),
      Field("engine", "choice", choices=tc.ENGINES),
      *[Field(n, "int", lo=1) for n in ("batch_size", "eval_batch_size", "num_steps",
                                         "log_every", "eval_every", "checkpoint_every",
                                         "keep_checkpoints")],
      Field("bn_calibration_batches", "int", lo=0),
      Field("bn_calibration_batch_size", "int", lo=1),
      Field("drop_path_rate", "float", lo=0, hi=1, open_hi=True),
      Field("aux_weight", "float", lo=0),
      Field("depth_flip_tta", "bool"), Field("tensorboard", "bool"),
      Field("init_from", "custom", ok=_dir_ok, gen=path_gen),
      Field("optimizer.lr", "float", lo=0), Field("optimizer.weight_decay", "float", lo=0),
      Field("optimizer.grad_clip", "float", lo=0), Field("optimizer.warmup_steps", "int", lo=0),
      Field("optimizer.final_lr_fraction", "float", lo=0, hi=1),
      Field("optimizer.eps", "float", lo=0, open_lo=True),
      Field("optimizer.restart_per_stage", "bool"),
      Field("teacher.source", "choice", choices=tc.TEACHER_SOURCES,
            ok=lambda v, cfg: (v != "checkpoint" or _some_dir(cfg.teacher.checkpoint))
            and (v != "store" or _some_dir(cfg.teacher.store))),
      Field("teacher.checkpoint", "custom", context=("--config.teacher.source=checkpoint",),
            when=lambda cfg: cfg.teacher.source == "checkpoint",
            ok=lambda v, cfg: isinstance(v, str) and bool(v) and os.path.isdir(v), gen=path_gen),
      Field("teacher.num_steps", "int", lo=1), Field("teacher.eval_every", "int", lo=1),
      Field("teacher.model.patch_size", "int", lo=1, when=uses_teacher, context=teacher,
            ok=lambda v, cfg: _is_int(v) and v <= cfg.data.image_size),
      Field("teacher.model.dim", "int", lo=1, when=uses_teacher, context=teacher,
            ok=lambda v, cfg: _is_int(v) and _is_int(cfg.teacher.model.heads)
            and cfg.teacher.model.heads >= 1 and v % cfg.teacher.model.heads == 0),
      Field("teacher.model.depth", "int", lo=1, hi=4096, when=uses_teacher, context=teacher,
            ok=lambda v, cfg: _is_int(v) and -v <= cfg.teacher.model.feature_layer < v),
      Field("teacher.model.heads", "int", lo=1, when=uses_teacher, context=teacher,
            ok=lambda v, cfg: _is_int(v) and v >= 1 and cfg.teacher.model.dim % v == 0),
      Field("teacher.model.mlp_ratio", "float", lo=0, open_lo=True, when=uses_teacher,
            context=teacher),
      Field("teacher.model.feature_layer", "int", lo=-INT32_MAX, when=uses_teacher,
            context=teacher, ok=lambda v, cfg: _is_int(v) and -cfg.teacher.model.depth <= v
            < cfg.teacher.model.depth),
      Field("teacher.optimizer.lr", "float", lo=0, when=uses_teacher, context=teacher),
      Field("teacher.optimizer.weight_decay", "float", lo=0, when=uses_teacher, context=teacher),
      Field("teacher.optimizer.warmup_steps", "int", lo=0, when=uses_teacher, context=teacher),
      Field("teacher.optimizer.final_lr_fraction", "float", lo=0, hi=1, when=uses_teacher,
            context=teacher),
      Field("teacher.optimizer.grad_clip", "float", lo=0, when=uses_teacher, context=teacher),
      Field("distill.kd_ratio", "float", lo=0, hi=1),
      Field("distill.temperature", "float", lo=0, open_lo=True),
      Field("distill.alpha_spatial", "float", lo=0), Field("distill.alpha_frequency", "float", lo=0),
      Field("distill.reduction", "choice", choices=tc.REDUCTIONS),
      Field("distill.student_stage", "int", lo=-4, hi=3),
      Field("distill.projector.num_heads", "int", lo=1, when=uses_teacher, context=teacher),
      Field("distill.projector.softmax_scale", "float", lo=0, open_lo=True, when=uses_teacher,
            context=teacher),
      Field("distill.projector.ffn_ratio", "int", lo=1, when=uses_teacher, context=teacher),
      Field("sampling.rule", "choice", choices=SAMPLING_RULES),
      Field("sampling.inplace_kd", "bool"),
      Field("sampling.inplace_kd_ratio", "float", lo=0, hi=1),
      Field("pst.enabled", "bool"), Field("pst.k_max", "int", lo=1),
      Field("pst.k_final", "int", lo=0),
      Field("pst.stages", "custom", gen=_stages_gen, ok=_stages_ok),
      Field("parallel.data_sharding", "choice", choices=DATA_SHARDING_MODES),
      Field("parallel.num_devices", "int", lo=0),
      Field("fixed_subnet", "custom", gen=_genome_text_gen()),
  ]
  return f + _data_fields()


def search_fields() -> list[Field]:
  from evonas_jax import dmmpe, latency, search_lib
  from evonas_jax import train_config as tc

  def objectives_gen(fx):
    st = _st()
    names = list(search_lib.OBJECTIVES)
    return st.one_of(
        st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True).map(
            lambda xs: (",".join(xs), True)),
        st.lists(st.sampled_from(names + ["accuracy", "Error", "", " ", "latency_ms", "flops"]),
                 min_size=0, max_size=4).map(lambda xs: (",".join(xs), None)),
        _argv_text().map(lambda s: (s, None)))

  def objectives_ok(v, cfg):
    if not isinstance(v, str):
      return False
    names = [s.strip() for s in v.split(",") if s.strip()]
    if not names or any(n not in search_lib.OBJECTIVES for n in names) or len(set(names)) != len(names):
      return False
    return not (cfg.latency == "none" and "latency" in names)

  def tuple_gen(kind):
    def gen(fx):
      st = _st()
      el = {"int": st.integers(-3, 70).map(str),
            "float": st.one_of(st.floats(-2, 8).map(repr), st.sampled_from(
                ["nan", "inf", "0", "-1", "0.3", "1", "4.0", "2.5"]))}[kind]
      el = st.one_of(el, st.sampled_from(["'a'", "None", "True", "()"]))
      return st.one_of(st.lists(el, min_size=0, max_size=5).map(
          lambda xs: ("(" + ", ".join(xs) + ("," if len(xs) == 1 else "") + ")", None)),
          st.sampled_from([("3", None), ("()", True), ("abc", False)]))
    return gen

  def overrides_ok(cfg):
    o = cfg.space_overrides
    if cfg.supernet_workdir and any(o[k] for k in o):
      return False
    md, mlp, ds, ex = (tuple(o.max_depths), tuple(o.mlp_choices), tuple(o.d_state_choices),
                       tuple(o.expand_choices))
    if md and (len(md) != 4 or not all(_is_int(v) and 1 <= v <= 64 for v in md)):
      return False
    if mlp and not all(_is_real(v) and math.isfinite(v) and v > 0 for v in mlp):
      return False
    if ds and not all(_is_int(v) and 1 <= v <= 4096 for v in ds):
      return False
    if ex:
      from evonas_jax.space import PRESETS
      if not all(_is_real(v) and math.isfinite(v) and v > 0 for v in ex):
        return False
      dims = PRESETS.get(cfg.preset)
      if dims is None:
        return True
      for c, h in zip(dims, (2, 4, 8, 16)):
        for e in tuple(ex) + (2.0,):
          if (c * e) != int(c * e) or int(c * e) % h:
            return False
    return True

  def supernet_gen(fx):
    return _paths(fx, {"train": "train", "": ""}, {"missing": "missing", "file": "file",
                                                    "empty": "empty", "search": "search"})

  def table_gen(fx):
    return _paths(fx, {"": ""}, {"missing": "missing", "empty": "empty"})

  f = [
      Field("seed", "int", lo=0), Field("tensorboard", "bool"),
      Field("supernet_workdir", "custom", gen=supernet_gen, ok=lambda v, cfg: isinstance(v, str) and (
          v == "" or (os.path.isfile(os.path.join(v, "config.json"))
                      and os.path.isdir(os.path.join(v, "final"))))),
      Field("space", "choice", choices=tc.SPACES), Field("preset", "choice", choices=tc.PRESETS),
      *[Field(f"space_overrides.{k}", "custom", gen=tuple_gen(t), ok=lambda v, cfg: overrides_ok(cfg))
        for k, t in (("max_depths", "int"), ("mlp_choices", "float"), ("d_state_choices", "int"),
                     ("expand_choices", "float"))],
      Field("population_size", "int", lo=2), Field("num_generations", "int", lo=1),
      Field("objectives", "custom", gen=objectives_gen, ok=objectives_ok),
      Field("latency", "choice", choices=search_lib.LATENCY_MODES,
            ok=lambda v, cfg: objectives_ok(cfg.objectives, cfg)),
      Field("latency_backend", "choice", choices=latency.BACKENDS),
      Field("latency_table", "custom", gen=table_gen,
            ok=lambda v, cfg: isinstance(v, str) and (v == "" or os.path.isfile(v))),
      # MACs / parameter counts of real networks exceed 2**31: any finite number >= 0.
      Field("constraints.max_latency_ms", "float", lo=0),
      *[Field(f"constraints.{k}", "custom", ok=lambda v, cfg: _float_finite(v) and v >= 0,
              gen=lambda fx: candidates(Field("c", "int", lo=0, hi=2 ** 1100), fx))
        for k in ("max_macs", "max_params")],
      Field("nsga2.crossover_prob", "float", lo=0, hi=1),
      Field("nsga2.mutation_prob", "float", lo=0, hi=1),
      Field("evaluator.kind", "choice", choices=dmmpe.EVALUATORS),
      Field("evaluator.split", "choice", choices=dmmpe.ALLOWED_SPLITS),
      Field("evaluator.layout", "choice", choices=dmmpe.DMMPE_LAYOUTS),
      Field("evaluator.depth_flip_tta", "bool"),
      Field("evaluator.num_eval_batches", "int", lo=1), Field("evaluator.eval_batch_size", "int", lo=1),
      Field("evaluator.calib_batches", "int", lo=0), Field("evaluator.calib_batch_size", "int", lo=1),
      Field("evaluator.num_devices", "int", lo=0), Field("evaluator.devices_per_group", "int", lo=1),
      Field("evaluator.group_size", "int", lo=1),
      Field("latency_measure.batch", "int", lo=1), Field("latency_measure.warmup", "int", lo=0),
      Field("latency_measure.runs", "int", lo=1), Field("latency_measure.table_warmup", "int", lo=0),
      Field("latency_measure.table_runs", "int", lo=1), Field("latency_measure.threads", "int", lo=1),
      Field("latency_validation_archs", "int", lo=0), Field("measure_pareto_latency", "bool"),
      Field("measure_pareto_max", "int", lo=0),
  ]
  return f + _data_fields()


def finetune_fields() -> list[Field]:
  def source_gen(fx):
    return _paths(fx, {"search": "search"}, {"missing": "missing", "file": "file",
                                             "empty": "empty", "": ""})
  return [
      Field("seed", "int", lo=0),
      *[Field(n, "int", lo=1) for n in ("num_steps", "log_every", "eval_every",
                                         "checkpoint_every", "keep_checkpoints")],
      Field("batch_size", "int", lo=0),
      # < 0 keeps the supernet run's λ; otherwise a λ in [0, 1]. NaN is neither.
      Field("kd_ratio", "float", ok=lambda v, cfg: _is_real(v) and not math.isnan(v) and v <= 1,
            gen=lambda fx: _st().one_of(candidates(Field("k", "float", lo=-1, hi=1), fx),
                                        _st().just(("-inf", None)))),
      Field("optimizer.lr", "float", lo=0), Field("optimizer.weight_decay", "float", lo=0),
      Field("optimizer.grad_clip", "float", lo=0), Field("optimizer.warmup_steps", "int", lo=0),
      Field("optimizer.final_lr_fraction", "float", lo=0, hi=1),
      Field("tensorboard", "bool"),
      Field("source", "custom", gen=source_gen),
      Field("select", "custom", gen=_select_gen, ok=lambda v, cfg: select_ok(
          v, _rows_of(cfg.source), _tiny_space())),
  ]


def _rows_of(workdir):
  try:
    with open(os.path.join(workdir, "pareto.json")) as f:
      return json.load(f)["pareto"]
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _tiny_space():
  from evonas_jax.space import get_space
  return get_space("evonas", "tiny")


def export_fields() -> list[Field]:
  from evonas_jax import export_lib

  def comma_gen(allowed, extra):
    def gen(fx):
      st = _st()
      return st.one_of(
          st.lists(st.sampled_from(list(allowed)), min_size=1, max_size=3, unique=True).map(
              lambda xs: (",".join(xs), None)),
          st.lists(st.sampled_from(list(allowed) + extra), min_size=0, max_size=3).map(
              lambda xs: (",".join(xs), None)), _argv_text().map(lambda s: (s, None)))
    return gen

  def comma_ok(allowed):
    def ok(v, cfg):
      items = [p.strip() for p in str(v).split(",") if p.strip()]
      return bool(items) and all(p in allowed for p in items)
    return ok

  def workdir_gen(fx):
    return _paths(fx, {"search": "search"}, {"missing": "missing", "file": "file",
                                             "empty": "empty", "idx": "idx"})

  def out_gen(fx):
    st = _st()
    return st.sampled_from([(os.path.join(fx.a_file, "sub"), False), (fx.search_workdir, False),
                            (os.path.join(fx.root, "cases", "new_out_never_made"), True)])

  return [
      Field("select", "custom", gen=_select_gen, ok=lambda v, cfg: select_ok(
          v, _rows_of(cfg["workdir"]), _tiny_space())),
      Field("batch_size", "int", lo=0), Field("bn_recalib_batches", "int", lo=0, none_ok=True),
      Field("int8_val_images", "int", lo=1), Field("int8_max_drop", "float", lo=-1, hi=1),
      Field("platforms", "custom", gen=comma_gen(export_lib.PLATFORMS, ["tpu", "CPU", " ", "gpu"]),
            ok=comma_ok(export_lib.PLATFORMS)),
      Field("formats", "custom", gen=comma_gen(export_lib.FORMATS, ["tflite", "ONNX", "int4"]),
            ok=lambda v, cfg: comma_ok(export_lib.FORMATS)(v, cfg) and (
                "int8" not in str(v) or "onnx" in [p.strip() for p in str(v).split(",")])),
      Field("workdir", "custom", gen=workdir_gen),
      Field("out", "custom", gen=out_gen),
  ]


# =========================================================================== config / flag cases
def _unknown_field_strategy(paths: Sequence[str]):
  st = _st()
  known = set(paths)

  def typo(args):
    p, k, how = args
    i = k % max(len(p), 1)
    q = {"drop": p[:i] + p[i + 1:], "double": p[:i] + p[i] + p[i:], "x": p + "x",
         "upper": p.upper(), "underscore": p.replace(".", "_") if "." in p else p + "_s",
         "prefix": "x" + p}[how]
    return q

  cand = st.one_of(
      st.tuples(st.sampled_from(sorted(known)), st.integers(0, 40),
                st.sampled_from(["drop", "double", "x", "upper", "underscore", "prefix"])).map(typo),
      st.from_regex(r"[a-z][a-z_]{0,10}", fullmatch=True))
  return cand.filter(lambda q: q not in known and not any(k.startswith(q + ".") for k in known)
                     and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", q or "-") is not None
                     and not q.endswith(".") and ".." not in q)


def _config_cases(kind: str, cli: str, fields: list[Field], n: int, fx, runner, *,
                  base: Sequence[str] = (), cli_args: Sequence[str] = ()) -> list[Case]:
  """Override cases: one field (or an unknown one) per case, judged by every field's oracle."""
  st = _st()
  idx = st.integers(0, len(fields) - 1)
  strat = st.one_of(
      idx.flatmap(lambda i: st.tuples(st.just(i), candidates(fields[i], fx))),
      st.tuples(st.just(-1), _unknown_field_strategy([f.path for f in fields]).map(
          lambda q: (q, False))))
  # 1 in 2 draws of one_of go to the field branch: give the unknown-field branch a smaller share.
  draws = draw(strat, n)
  cases = []
  for i, (text, forced) in draws:
    if i < 0:
      path, value, context = text, "1", ()
    else:
      f = fields[i]
      path, value, context = f.path, text, f.context
    ovs = [*context, f"--config.{path}={value}"]
    try:
      with _quiet():
        cfg = parse_config(cli, [*base, *ovs])
      valid = (forced is not False) and all(field_ok(g, cfg) for g in fields)
    except Exception:  # noqa: BLE001 - the CLI's own flag parsing refuses it: invalid
      valid = False
    names = field_names(path)
    if os.sep in value:   # a path: the message may name the file instead of the field
      names += file_names(value)
    cases.append(Case(kind, " ".join(ovs), (lambda ovs=ovs: runner([*base, *ovs])),
                      names, valid=valid,
                      cli=(cli, *cli_args, *base, *ovs)))
  return cases


def _run_train(ovs):
  from evonas_jax.train_config import validate_train_config
  validate_train_config(parse_config("train", ovs))


def gen_config_train(n, fx):
  return _config_cases("config_train", "train", train_fields(), n, fx, _run_train,
                       cli_args=("--config", CLI_CONFIGS["train"]))


def _run_search(ovs):
  from evonas_jax import search_lib
  search_lib.validate_config(parse_config("search", ovs))


def gen_config_search(n, fx):
  return _config_cases("config_search", "search", search_fields(), n, fx, _run_search,
                       cli_args=("--config", CLI_CONFIGS["search"]))


def _run_finetune(ovs):
  from evonas_jax.finetune import finetune_lib
  from evonas_jax.train_config import validate_train_config
  ft = parse_config("finetune", ovs)
  finetune_lib.validate(ft)
  # What finetune/__main__ and finetune() run before any training: the derived train config's
  # validation is the first thing train_and_evaluate does.
  validate_train_config(finetune_lib.train_config(ft))


def gen_config_finetune(n, fx):
  base = (f"--config.source={fx.search_workdir}", "--config.select=0")
  return _config_cases("config_finetune", "finetune", finetune_fields(), n, fx, _run_finetune,
                       base=base, cli_args=("--config", CLI_CONFIGS["finetune"]))


def _run_convert_import(fx, ovs, flags_argv=()):
  from evonas_jax.convert import pipeline
  fv = parse_convert_flags(fx, [f"--config={os.path.join(ROOT, CLI_CONFIGS['convert'])}",
                                *ovs, *flags_argv])
  if fv["reverse"]:
    pipeline.check_export_args(fv["from"], fv["to"], select=fv["select"],
                               overwrite=fv["overwrite"])
  else:
    if fv["config"] is None:
      raise ValueError("--config is required")   # convert/__main__'s own check
    pipeline.check_import_args(fv["from"], fv["to"], fv["config"], pad=fv["pad"],
                               skip=fv["skip"])


def gen_config_convert(n, fx):
  src = fx.state_dict_npz
  fields = [f for f in train_fields()]

  def runner(ovs):
    to = fx.fresh("convert_to")
    _run_convert_import(fx, ovs, ["--from", src, "--to", to])

  return _config_cases("config_convert", "convert", fields, n, fx, runner,
                       cli_args=("--config", CLI_CONFIGS["convert"], "--from", src, "--to",
                                 "<fresh>"))


# ---- flags of export / convert / prepare (mirrors of the CLIs' absl / argparse definitions)
def parse_export_flags(argv: Sequence[str]) -> dict:
  """evonas_jax/export.py's flags (same names, types and defaults) parsed from argv."""
  from absl import flags
  fv = flags.FlagValues()
  for name, default in (("workdir", None), ("select", None), ("out", None),
                        ("platforms", "cpu,cuda"), ("formats", "jax_export"),
                        ("compile_cache_dir", "")):
    flags.DEFINE_string(name, default, name, flag_values=fv)
  for name, default in (("batch_size", 0), ("bn_recalib_batches", None), ("int8_val_images", 1000)):
    flags.DEFINE_integer(name, default, name, flag_values=fv)
  flags.DEFINE_float("int8_max_drop", 0.01, "int8_max_drop", flag_values=fv)
  for name in ("allow_int8_drop", "overwrite"):
    flags.DEFINE_bool(name, False, name, flag_values=fv)
  fv(["export", *argv])
  return {k: fv[k].value for k in fv}


def parse_convert_flags(fx, argv: Sequence[str]) -> dict:
  """evonas_jax/convert/__main__.py's flags (and its --config file + overrides) from argv."""
  from absl import flags
  from ml_collections import config_flags
  full = ["convert", *argv]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                  sys_argv=full)
  for name in ("from", "to", "select"):
    flags.DEFINE_string(name, None, name, flag_values=fv)
  flags.DEFINE_string("compile_cache_dir", "", "c", flag_values=fv)
  for name in ("reverse", "remap", "allow_unmapped", "overwrite"):
    flags.DEFINE_bool(name, False, name, flag_values=fv)
  flags.DEFINE_enum("pad", "init", ["init", "zero"], "pad", flag_values=fv)
  flags.DEFINE_multi_string("skip", [], "skip", flag_values=fv)
  if _uses_usage_parser("convert"):
    from evonas_jax.train_config import config_flags_parser
    err = io.StringIO()
    try:
      with contextlib.redirect_stderr(err):
        config_flags_parser(full, flag_values=fv)
    except SystemExit as e:
      raise ExitStatus(e.code, err.getvalue()) from None
  else:
    fv(full)
  for req in ("from", "to"):
    if fv[req].value is None:
      raise ExitStatus(1, f"FATAL Flags parsing error: flag --{req}=None: Flag --{req} must "
                       "have a value other than None.")
  return {k: fv[k].value for k in fv}


def _flag_cases(kind: str, fields: list[Field], n: int, fx, base: Sequence[str], run_argv,
                parse, cli: str) -> list[Case]:
  st = _st()
  idx = st.integers(0, len(fields) - 1)
  strat = idx.flatmap(lambda i: st.tuples(st.just(i), candidates(fields[i], fx)))
  cases = []
  for i, (text, forced) in draw(strat, n):
    f = fields[i]
    argv = [a for a in base]
    if f"--{f.path}" in argv:   # replace the base value of this flag
      j = argv.index(f"--{f.path}")
      del argv[j:j + 2]
    argv += [f"--{f.path}={text}"]
    try:
      with _quiet():
        vals = parse(argv)
      valid = forced is not False and all(field_ok(g, vals) for g in fields)
    except Exception:  # noqa: BLE001 - refused by the flag parser: invalid
      valid = False
    names = field_names(f.path) + (re.escape("--" + f.path),)
    if os.sep in text:   # a path: the message may name the file instead of the flag
      names += file_names(text)
    cases.append(Case(kind, f"--{f.path}={text!r}", (lambda argv=argv: run_argv(argv)), names,
                      valid=valid, cli=(cli, *argv)))
  return cases


def _run_export(argv):
  from evonas_jax import export_lib
  f = parse_export_flags(argv)
  export_lib.plan_export(f["workdir"], f["select"], f["out"], batch_size=f["batch_size"],
                         platforms=f["platforms"], bn_recalib_batches=f["bn_recalib_batches"],
                         overwrite=f["overwrite"], formats=f["formats"],
                         int8_max_drop=f["int8_max_drop"], int8_val_images=f["int8_val_images"])


def gen_args_export(n, fx):
  base = ["--workdir", fx.search_workdir, "--select", "0"]
  cases = _flag_cases("args_export", export_fields(), n, fx, base, _run_export,
                      parse_export_flags, "export")
  for c in cases:
    c.workdir = fx.search_workdir   # export must never modify the search workdir
  return cases


def convert_fields(fx) -> list[Field]:
  st = _st()

  def regex_ok(v, cfg):
    try:
      for r in (v if isinstance(v, list) else [v]):
        re.compile(r)
      return True
    except (re.error, TypeError):
      return False

  def from_gen(fx):
    bad = os.path.join(fx.root, "bad_state_dicts")
    os.makedirs(bad, exist_ok=True)
    files = {}
    for name, data in (("garbage.npz", b"not a zip"), ("empty.npz", b""),
                       ("truncated.npz", open(fx.state_dict_npz, "rb").read()[:100]),
                       ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json"),
                       ("weights.bin", b"1234"), ("noext", b"1234"),
                       ("huge_header.safetensors", (2 ** 62).to_bytes(8, "little") + b"{}")):
      p = os.path.join(bad, name)
      if not os.path.exists(p):
        with open(p, "wb") as f:
          f.write(data)
      files[p] = False
    files[fx.state_dict_npz] = True
    files[fx.missing + ".npz"] = False
    files[fx.empty_dir] = False
    return st.sampled_from(sorted(files.items()))

  def to_gen(fx):
    return st.sampled_from([(fx.search_workdir, False), (os.path.join(fx.a_file, "x"), False),
                            (fx.empty_dir, True), ("<fresh>", True)])

  return [
      Field("pad", "choice", choices=("init", "zero")),
      Field("skip", "custom", ok=regex_ok, gen=lambda fx: st.one_of(
          st.sampled_from(["(", "[a", "*", "a{2,1}", "(?P<x>", "\\", "^head\\.", "x|y", "(?<=a+)b"]),
          _argv_text()).map(lambda s: (s, None))),
      Field("from", "custom", gen=from_gen),
      Field("to", "custom", gen=to_gen),
      Field("allow_unmapped", "bool"),
  ]


def convert_reverse_fields(fx) -> list[Field]:
  st = _st()

  def to_gen(fx):
    return st.sampled_from([(os.path.join(fx.root, "cases", "out.safetensors"), True),
                            (os.path.join(fx.root, "cases", "out.npz"), True),
                            (os.path.join(fx.root, "cases", "out.bin"), False),
                            (os.path.join(fx.root, "cases", "out"), False),
                            (fx.a_file, False), (os.path.join(fx.a_file, "x.npz"), False)])

  def from_gen(fx):
    return _paths(fx, {"search": "search"}, {"missing": "missing", "file": "file",
                                             "empty": "empty"})

  return [
      Field("select", "custom", gen=_select_gen, ok=lambda v, cfg: select_ok(
          v, _rows_of(cfg["from"]), _tiny_space())),
      Field("to", "custom", gen=to_gen), Field("from", "custom", gen=from_gen),
  ]


def gen_args_convert(n, fx):
  def run_import(argv):
    argv = [a.replace("<fresh>", fx.fresh("convert_to")) for a in argv]
    _run_convert_import(fx, [], argv)

  def parse_import(argv):
    argv = [a.replace("<fresh>", fx.fresh("convert_to")) for a in argv]
    return parse_convert_flags(fx, [f"--config={os.path.join(ROOT, CLI_CONFIGS['convert'])}",
                                    *argv])

  imp = _flag_cases("args_convert", convert_fields(fx), n - n // 3, fx,
                    ["--from", fx.state_dict_npz, "--to", "<fresh>"], run_import, parse_import,
                    "convert")
  for c in imp:
    c.cli = (*c.cli[:1], "--config", CLI_CONFIGS["convert"], *c.cli[1:])
  rev_base = ["--reverse", "--from", fx.search_workdir, "--to",
              os.path.join(fx.root, "cases", "out.safetensors"), "--select", "0"]
  rev = _flag_cases("args_convert", convert_reverse_fields(fx), n // 3, fx, rev_base,
                    lambda argv: _run_convert_import(fx, [], argv),
                    lambda argv: parse_convert_flags(fx, argv), "convert")
  for c in rev:
    c.workdir = fx.search_workdir
  return imp + rev


def _run_prepare(argv):
  from evonas_jax import prepare
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      code = prepare.main(list(argv))
  except SystemExit as e:   # argparse: status 2 and a usage message on stderr
    code = e.code
  if code:
    raise ExitStatus(code, err.getvalue())
  return code


def gen_args_prepare(n, fx, *, allow_writes: bool = True):
  """prepare's argv: --source/--dataset, --val_size, --data_dir, --tfds_data_dir. Valid runs
  write a digits dataset (a few seconds each): at most `allow_writes` of them are generated."""
  st = _st()
  from evonas_jax.data import sources
  n_train = sources.DIGITS_TRAIN_SIZE
  vals = st.one_of(st.sampled_from(["-1", "0", "0.5", "1.0", "1.5", "1437", "1438", "5000",
                                    "nan", "inf", "-inf", "abc", "", "1e-9", "0.9999", "0x10",
                                    "1e3", "100"]),
                   st.integers(-100, 3000).map(str), st.floats(-2, 2).map(repr))
  what = st.sampled_from(["source_ok", "source_bad", "dataset_bad", "both", "neither",
                          "val", "data_dir", "tfds_file", "tfds_exists", "unknown_flag"])
  strat = st.tuples(what, vals, st.sampled_from(["fashionmnist", "Digits", "", "mnist", "cifar10",
                                                 "digits ", "arc2017", "nyu"]))

  def val_ok(text):
    try:
      v = int(text)
    except ValueError:
      try:
        v = float(text)
      except ValueError:
        return False
    if isinstance(v, float) and not v.is_integer():
      return 0 < v < 1 and int(round(v * n_train)) < n_train
    return 0 <= int(v) < n_train

  cases = []
  writes = 0
  for w, val, name in draw(strat, n):
    out = fx.fresh("tfds")
    argv, valid, names, wd = ["--source", "digits", "--tfds_data_dir", out], True, (), None
    if w == "source_ok":
      argv += ["--val_size", "100"]
      names = ("source",)
    elif w == "source_bad":
      argv[1] = name
      valid, names = False, ("--source", "source")
    elif w == "dataset_bad":
      argv = ["--dataset", name, "--tfds_data_dir", out]
      valid, names = False, ("--dataset",)
    elif w == "both":
      argv += ["--dataset", "arc2017_local"]
      valid, names = False, ("--source", "--dataset")
    elif w == "neither":
      argv = ["--tfds_data_dir", out]
      valid, names = False, ("--source", "--dataset")
    elif w == "val":
      argv += [f"--val_size={val}"]
      valid, names = val_ok(val), ("val_size",)
    elif w == "data_dir":
      argv = ["--source", "fashion_mnist", "--data_dir", fx.missing, "--tfds_data_dir", out]
      valid, names = False, file_names(fx.missing) + ("data_dir",)
    elif w == "tfds_file":
      argv[3] = os.path.join(fx.a_file, "sub")
      argv += ["--val_size", "100"]
      valid, names = False, file_names(fx.a_file)
    elif w == "tfds_exists":
      argv[3] = fx.tfds_dir
      valid, names, wd = False, ("overwrite",), fx.tfds_dir
    elif w == "unknown_flag":
      argv += [f"--{name or 'x'}_flag=1"]
      valid, names = False, ("unrecognized arguments",)
    if valid:
      if writes >= allow_writes:
        continue
      writes += 1
    cases.append(Case("args_prepare", " ".join(argv).replace(fx.root, "<tmp>"),
                      (lambda argv=argv: _run_prepare(argv)), names, valid=valid, workdir=wd,
                      cli=("prepare", *argv)))
  return cases


# =========================================================================== corrupt files
def _link_copy(src: str, dst: str) -> str:
  """A copy of the tree `src` at `dst`, files hard-linked (cheap). A case replaces a file it
  corrupts (`_replace`: unlink, then write), so the shared fixture is never modified."""
  for dirpath, _, filenames in os.walk(src):
    rel = os.path.relpath(dirpath, src)
    os.makedirs(os.path.join(dst, rel), exist_ok=True)
    for f in filenames:
      a, b = os.path.join(dirpath, f), os.path.join(dst, rel, f)
      try:
        os.link(a, b)
      except OSError:
        shutil.copy2(a, b)
  return dst


def _files_under(root: str) -> list[str]:
  out = []
  for dirpath, _, filenames in os.walk(root):
    out += [os.path.join(dirpath, f) for f in filenames]
  return sorted(out)


def _replace(path: str, data: bytes) -> None:
  if os.path.lexists(path):
    os.unlink(path)
  with open(path, "wb") as f:
    f.write(data)


def _bytes_ops():
  """Strategy: one way of corrupting a file's bytes."""
  st = _st()
  frac = st.floats(0, 1, allow_nan=False)
  return st.one_of(
      st.tuples(st.just("truncate"), frac), st.tuples(st.just("truncate"), frac),
      st.tuples(st.just("flip"), frac, st.integers(1, 255)),
      st.tuples(st.just("flip"), frac, st.integers(1, 255)),
      st.tuples(st.just("empty")), st.tuples(st.just("garbage"), st.binary(max_size=64)),
      st.tuples(st.just("append"), st.binary(min_size=1, max_size=16)),
      st.tuples(st.just("delete")), st.tuples(st.just("dir")))


def _apply_bytes(path: str, op) -> str:
  """Corrupts `path` by `op`; returns a description."""
  what = op[0]
  data = open(path, "rb").read() if os.path.isfile(path) else b""
  if what == "truncate":
    k = int(op[1] * max(len(data) - 1, 0))
    _replace(path, data[:k])
    return f"truncated to {k}/{len(data)} bytes"
  if what == "flip":
    if not data:
      _replace(path, b"\x00")
      return "flip (empty file -> 1 byte)"
    i = min(int(op[1] * len(data)), len(data) - 1)
    b = bytearray(data)
    b[i] ^= op[2]
    _replace(path, bytes(b))
    return f"byte {i}/{len(data)} ^= 0x{op[2]:02x}"
  if what == "empty":
    _replace(path, b"")
    return "emptied"
  if what == "garbage":
    _replace(path, op[1])
    return f"replaced by {len(op[1])} garbage bytes"
  if what == "append":
    _replace(path, data + op[1])
    return f"{len(op[1])} bytes appended"
  if what == "delete":
    os.unlink(path)
    return "deleted"
  if what == "dir":
    os.unlink(path)
    os.makedirs(path)
    return "replaced by a directory"
  raise AssertionError(what)


def _arrays_equal(a, b) -> bool:
  import jax
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  if ta != tb or len(la) != len(lb):
    return False
  return all(np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
             and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _source_same(ref):
  """`same` predicate: a SourceData with the reference's splits, value for value."""
  def same(sd) -> bool:
    return set(sd.splits) == set(ref.splits) and all(
        _arrays_equal(sd.splits[k], ref.splits[k]) for k in ref.splits)
  return same


def _idx_strategy():
  st = _st()
  fi = st.integers(0, 3)
  return st.one_of(
      st.tuples(st.just("valid")), st.tuples(st.just("raw"), fi),
      st.tuples(st.just("bytes"), fi, _bytes_ops()), st.tuples(st.just("bytes"), fi, _bytes_ops()),
      st.tuples(st.just("code"), fi, st.integers(0, 255)),
      st.tuples(st.just("ndim"), fi, st.integers(0, 255)),
      st.tuples(st.just("dim"), fi, st.integers(0, 3), st.one_of(
          st.integers(0, 64), st.sampled_from([2 ** 32 - 1, 2 ** 31, 2 ** 16 + 1]))),
      st.tuples(st.just("payload"), fi, st.floats(0, 1, allow_nan=False)),
      st.tuples(st.just("magic"), fi, st.integers(1, 255)),
      st.tuples(st.just("labels"), st.integers(0, 1), st.integers(10, 255)),
      st.tuples(st.just("count"), st.integers(0, 1)),
      st.tuples(st.just("data_dir"), st.sampled_from(["missing", "file", "empty"])))


IDX_FILE_NAMES = ("idx", "fashion-mnist", "fashion_mnist")


def _idx_files(d: str) -> list[str]:
  from evonas_jax.data.sources import FASHION_MNIST_FILES
  return [os.path.join(d, f) for pair in FASHION_MNIST_FILES.values() for f in pair]


def gen_idx_file(n, fx):
  """Fashion-MNIST IDX directories with one truncated / corrupt / missing file."""
  from evonas_jax.data.sources import load_fashion_mnist
  ref = fx.idx_reference
  cases = []
  for op in draw(_idx_strategy(), n):
    what = op[0]
    if what == "data_dir":
      d = {"missing": fx.missing, "file": fx.a_file, "empty": fx.empty_dir}[op[1]]
      cases.append(Case("idx_file", f"data_dir is {op[1]}", (lambda d=d: load_fashion_mnist(d)),
                        file_names(d) + IDX_FILE_NAMES,
                        workdir=d if os.path.isdir(d) else None))
      continue
    d = _link_copy(fx.idx_dir, fx.fresh("idx"))
    files = _idx_files(d)
    valid, desc, target = False, what, None
    if what == "valid":
      valid = True
    elif what == "bytes":
      target = files[op[1]]
      desc = _apply_bytes(target, op[2])
    elif what == "labels":   # a label outside 0..9 (the gzip and IDX framing stay intact)
      target = files[2 * op[1] + 1]
      a = _read_idx_file(target)
      a[0] = op[2]
      _replace(target, gzip.compress(idx_bytes(a), mtime=0))
      desc = f"label {op[2]}"
    elif what == "count":   # one label fewer than images
      target = files[2 * op[1] + 1]
      _replace(target, gzip.compress(idx_bytes(_read_idx_file(target)[:-1]), mtime=0))
      desc = "one label missing"
    else:
      target = files[op[1]]
      raw = bytearray(gzip.decompress(open(target, "rb").read()))
      if what == "raw":   # not gzip-compressed: the reader detects that (valid)
        valid, desc = True, "stored uncompressed"
      elif what == "code":
        raw[2] = op[2]
        desc = f"type code 0x{op[2]:02x}"
      elif what == "ndim":
        raw[3] = op[2]
        desc = f"ndim {op[2]}"
      elif what == "dim":
        ndim = raw[3]
        i = op[2] % max(ndim, 1)
        raw[4 + 4 * i:8 + 4 * i] = int(op[3]).to_bytes(4, "big")
        desc = f"dim {i} = {op[3]}"
      elif what == "payload":
        head = 4 + 4 * raw[3]
        k = head + int(op[2] * (len(raw) - head - 1))
        raw = raw[:k]
        desc = f"payload cut at {k}"
      elif what == "magic":
        raw[op[2] % 2] = op[2]
        desc = f"magic byte {op[2] % 2} = {op[2]}"
      _replace(target, bytes(raw) if what == "raw" else gzip.compress(bytes(raw), mtime=0))
    names = file_names(d) + IDX_FILE_NAMES + (file_names(target) if target else ())
    cases.append(Case("idx_file", f"{os.path.basename(target or d)}: {desc}",
                      (lambda d=d: load_fashion_mnist(d)), names, valid=valid, workdir=d,
                      same=_source_same(ref)))
  return cases


def _read_idx_file(path: str) -> np.ndarray:
  from evonas_jax.data import idx as idx_lib
  return idx_lib.read_idx(path)


# ---- NaN / inf images
def gen_nonfinite_images(n, fx):
  """NaN / inf / out-of-range pixels in float IDX files, mean / std of the Preprocessor, and
  float image batches handed to preprocessing."""
  st = _st()
  from evonas_jax.data.preprocess import Preprocessor
  from evonas_jax.data.sources import load_fashion_mnist
  bad_val = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, 256.0, 0.5,
                             1e30, -0.0, 255.0, 0.0, 17.0])
  mean_std = st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e-3, 0.5,
                              1.0, 3.0])
  strat = st.one_of(
      st.tuples(st.just("idx"), st.sampled_from(["float32", "float64"]), st.integers(0, 1),
                st.lists(bad_val, max_size=3)),
      st.tuples(st.just("norm"), st.sampled_from(["mean", "std"]),
                st.lists(mean_std, min_size=1, max_size=3)),
      st.tuples(st.just("batch"), st.sampled_from(["eval", "train"]),
                st.sampled_from(["float32", "float64", "float16"]), st.lists(bad_val, max_size=3)))
  rng = np.random.default_rng(0)
  base_u8 = rng.integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
  cases = []
  for op in draw(strat, n):
    if op[0] == "idx":
      _, dt, split_i, vals = op
      d = _link_copy(fx.idx_dir, fx.fresh("nonfinite"))
      target = _idx_files(d)[2 * split_i]
      a = _read_idx_file(target).astype(dt)
      flat = a.reshape(-1)
      for j, v in enumerate(vals):
        flat[(j * 97) % flat.size] = v
      _replace(target, gzip.compress(idx_bytes(a), mtime=0))
      valid = all(math.isfinite(v) and 0 <= v <= 255 and float(v).is_integer() for v in vals)
      cases.append(Case("nonfinite_images", f"{dt} IDX images with {vals}",
                        (lambda d=d: load_fashion_mnist(d)),
                        file_names(target) + ("pixel", "images"), valid=valid, workdir=d))
    elif op[0] == "norm":
      _, which, vals = op
      kw = {which: tuple(vals)}
      ok = all(math.isfinite(v) for v in vals) and (which == "mean" or all(v > 0 for v in vals))
      cases.append(Case("nonfinite_images", f"Preprocessor({which}={tuple(vals)})",
                        (lambda kw=kw: Preprocessor(image_size=8, channels=1, **kw).eval(base_u8)),
                        (which,), valid=ok))
    else:
      _, mode, dt, vals = op
      x = base_u8.astype(dt)
      flat = x.reshape(-1)
      for j, v in enumerate(vals):
        flat[(j * 31) % flat.size] = v
      ok = bool(np.isfinite(x).all())
      pre = Preprocessor(image_size=8, channels=1, crop_padding=1, random_flip=True)
      run = ((lambda x=x: pre.eval(x)) if mode == "eval" else
             (lambda x=x: pre.train(x, np.arange(4), np.zeros(4, np.int64), 0)))
      cases.append(Case("nonfinite_images", f"Preprocessor.{mode}({dt} images with {vals})", run,
                        ("images?", "pixel"), valid=ok))
  return cases


# ---- orbax checkpoints
def _ckpt_strategy():
  st = _st()
  return st.one_of(
      st.tuples(st.just("valid"), st.sampled_from(["pytree", "train"])),
      # train: one step corrupted (restore falls back to the other: benign when its data is
      # intact), or train_both: the same file of both steps (no fallback left).
      st.tuples(st.just("bytes"), st.sampled_from(["pytree", "train", "train_both"]),
                st.integers(0, 400), _bytes_ops()),
      st.tuples(st.just("bytes"), st.sampled_from(["pytree", "train_both"]),
                st.integers(0, 400), _bytes_ops()),
      st.tuples(st.just("rmdir"), st.sampled_from(["pytree", "train", "train_both"]),
                st.integers(0, 400)),
      st.tuples(st.just("target"), st.sampled_from(["shape", "dtype", "missing", "extra"])),
      st.tuples(st.just("path"), st.sampled_from(["missing", "file", "empty"])))


def _restore_train(path):
  from evonas_jax.checkpoint import TrainCheckpointer, abstract_like
  ck = TrainCheckpointer(path, keep=2, async_save=False)
  try:
    r = ck.restore_latest(abstract_like(Fixtures.ckpt_tree(2)))
  finally:
    ck.close()
  return r   # None: no checkpoint found (for a corrupted one: a silent acceptance)


def _train_same(r) -> bool:
  state, meta, step = r
  return _arrays_equal(state, Fixtures.ckpt_tree(step)) and dict(meta) == {"step": step}


def gen_checkpoint_files(n, fx):
  """Orbax checkpoints (load_pytree / TrainCheckpointer.restore_latest) with a corrupt,
  truncated or missing file or directory, a missing path, or a mismatched restore target."""
  from evonas_jax.checkpoint import load_pytree
  cases = []
  ref = Fixtures.ckpt_tree()
  for op in draw(_ckpt_strategy(), n):
    what = op[0]
    if what == "path":
      p = {"missing": fx.missing, "file": fx.a_file, "empty": fx.empty_dir}[op[1]]
      cases.append(Case("checkpoint_files", f"load_pytree({op[1]})", (lambda p=p: load_pytree(p)),
                        file_names(p) + ("checkpoint",)))
      continue
    if what == "target":
      import copy
      tgt = copy.deepcopy(ref)
      if op[1] == "shape":
        tgt["params"]["w"] = np.zeros((4, 16), np.float32)
      elif op[1] == "dtype":
        tgt["params"]["b"] = np.zeros(8, np.int32)
      elif op[1] == "missing":
        tgt["params"]["bias2"] = np.zeros(3, np.float32)
      else:
        del tgt["batch_stats"]
      p = _link_copy(fx.pytree_ckpt, fx.fresh("ckpt"))
      cases.append(Case("checkpoint_files", f"load_pytree(target with {op[1]} mismatch)",
                        (lambda p=p, t=tgt: load_pytree(p, t)), file_names(p) + ("checkpoint",),
                        workdir=p, same=lambda r: _arrays_equal(r, ref)))
      continue
    kind = op[1]
    src = fx.pytree_ckpt if kind == "pytree" else fx.train_ckpt
    p = _link_copy(src, fx.fresh("ckpt"))
    run = (lambda p=p: load_pytree(p)) if kind == "pytree" else (lambda p=p: _restore_train(p))
    same = (lambda r: _arrays_equal(r, ref)) if kind == "pytree" else _train_same
    valid, desc, target = what == "valid", "intact", None

    def twin(path):   # the same file / folder in the other step (train_both)
      rel = os.path.relpath(path, p).split(os.sep)
      return os.path.join(p, "1" if rel[0] == "2" else "2", *rel[1:])

    if what == "bytes":
      files = _files_under(p)
      target = files[op[2] % len(files)]
      desc = f"{os.path.relpath(target, p)} {_apply_bytes(target, op[3])}"
      if kind == "train_both" and os.path.isfile(twin(target)):
        _apply_bytes(twin(target), op[3])
        desc += " (in both steps)"
    elif what == "rmdir":
      dirs = sorted({os.path.dirname(f) for f in _files_under(p)} - {p})
      if dirs:
        target = dirs[op[2] % len(dirs)]
        shutil.rmtree(target)
        desc = f"{os.path.relpath(target, p)}/ deleted"
        if kind == "train_both" and os.path.isdir(twin(target)):
          shutil.rmtree(twin(target))
          desc += " (in both steps)"
          if os.sep not in os.path.relpath(target, p):   # both steps gone: no checkpoint,
            valid = True                                   # restore_latest -> None (a new run)
    names = file_names(p) + ("checkpoint",) + (file_names(target) if target else ())
    cases.append(Case("checkpoint_files", f"{kind}: {desc}", run, names, valid=valid, workdir=p,
                      same=same))
  return cases


# ---- prepared TFDS (array_record) datasets
def _tfds_read(tfds_dir: str) -> dict:
  """What training reads: each split opened (tfds_source.open_split) and every record decoded."""
  return read_tfds_splits(tfds_dir)


def gen_tfds_files(n, fx):
  """A prepared digits dataset with one corrupt / truncated / missing file."""
  st = _st()
  ref = fx.tfds_reference

  def same(got) -> bool:
    return set(got) == set(ref) and all(
        np.array_equal(got[k][0], ref[k][0]) and np.array_equal(got[k][1], ref[k][1])
        for k in ref)

  strat = st.one_of(st.tuples(st.just("valid")),
                    st.tuples(st.just("bytes"), st.integers(0, 20), _bytes_ops()),
                    st.tuples(st.just("json"), st.sampled_from(
                        ["dataset_info.json", "features.json"]), st.sampled_from(
                        ["splits", "numShards", "shardLengths", "fileFormat", "name", "features",
                         "type", "shape", "dtype"]), st.sampled_from(
                        [None, -1, 0, 10 ** 12, "x", [], {}, 1.5, "tfrecord"])),
                    st.tuples(st.just("data_dir"), st.sampled_from(["missing", "file", "empty"])))
  cases = []
  for op in draw(strat, n):
    if op[0] == "data_dir":
      d = {"missing": fx.missing, "file": fx.a_file, "empty": fx.empty_dir}[op[1]]
      cases.append(Case("tfds_files", f"tfds_data_dir is {op[1]}", (lambda d=d: _tfds_read(d)),
                        file_names(d) + ("evonas_digits",)))
      continue
    d = _link_copy(fx.tfds_dir, fx.fresh("tfds"))
    files = _files_under(d)
    valid, desc, target = op[0] == "valid", "intact", None
    if op[0] == "bytes":
      target = files[op[1] % len(files)]
      desc = f"{os.path.basename(target)} {_apply_bytes(target, op[2])}"
    elif op[0] == "json":
      target = [f for f in files if f.endswith(op[1])][0]
      obj = json.load(open(target))
      changed = _set_json_key(obj, op[2], op[3])
      _replace(target, json.dumps(obj).encode())
      desc = f"{op[1]}: every {op[2]!r} = {op[3]!r}" + ("" if changed else " (key absent)")
      valid = None if not changed else False   # unchanged content: valid
      valid = not changed
    names = file_names(d) + ("evonas_digits", "array_record", "dataset_info", "features",
                             "split") + (file_names(target) if target else ())
    cases.append(Case("tfds_files", desc, (lambda d=d: _tfds_read(d)), names, valid=valid,
                      workdir=d, same=same))
  return cases


def _set_json_key(obj, key, value) -> bool:
  """Sets every `key` in the nested JSON `obj` to `value`; whether any was found."""
  found = False
  if isinstance(obj, dict):
    for k in list(obj):
      if k == key:
        obj[k] = value
        found = True
      else:
        found |= _set_json_key(obj[k], key, value)
  elif isinstance(obj, list):
    for x in obj:
      found |= _set_json_key(x, key, value)
  return found


# ---- latency tables
def _table_paths(entries: dict, prefix=()) -> list[tuple]:
  out = []
  for k, v in entries.items():
    if isinstance(v, dict):
      out += _table_paths(v, prefix + (k,))
    else:
      out.append(prefix + (k,))
  return sorted(out)


def gen_latency_table(n, fx):
  """Latency-table JSON files as search loads them (load_device_table, then predict)."""
  st = _st()
  import copy
  from evonas_jax import search_lib
  from evonas_jax.space import get_space
  name, preset, num_classes, shape = Fixtures.TABLE_SPEC
  sp = get_space(name, preset)
  archs = [sp.decode(g) for g in sp.sample(0, 6)]
  base = fx.latency_table
  paths = _table_paths(base["entries"])
  junk = st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, -1e-9, "1.0", None,
                          [], {}, True, 0.0, 1e6, 0.5, 3])
  meta_keys = ["space", "preset", "dims", "max_depths", "num_classes", "image_shape", "backend",
               "batch"]
  meta_vals = st.sampled_from(["evonas", "hybrid", "tiny", "small", [], [16, 16], 10, 100, None,
                               "x", [16, 16, 1], [8, 8, 1], 0, -1, "tpu", 1])
  strat = st.one_of(
      st.tuples(st.just("valid")),
      st.tuples(st.just("entry"), st.integers(0, len(paths) - 1), junk),
      st.tuples(st.just("drop"), st.integers(0, len(paths) - 1)),
      st.tuples(st.just("meta"), st.sampled_from(meta_keys), meta_vals),
      st.tuples(st.just("drop_meta"), st.sampled_from(meta_keys)),
      st.tuples(st.just("top"), st.sampled_from(["no meta", "no entries", "list", "null",
                                                 "entries list", "meta list"])),
      st.tuples(st.just("text"), st.sampled_from(["truncate", "garbage", "empty"]),
                st.floats(0, 1, allow_nan=False)),
      st.tuples(st.just("path"), st.sampled_from(["missing", "dir"])))
  cases = []
  for op in draw(strat, n):
    d = copy.deepcopy(base)
    what, valid, desc = op[0], False, op[0]
    p = os.path.join(fx.fresh_dir("table"), "table.json")
    text = None
    if what == "valid":
      valid = True
    elif what == "entry":
      key, v = paths[op[1]], op[2]
      node = d["entries"]
      for k in key[:-1]:
        node = node[k]
      node[key[-1]] = v
      valid = _is_real(v) and math.isfinite(v) and v >= 0
      desc = f"entry {'/'.join(key)} = {v!r}"
    elif what == "drop":
      key = paths[op[1]]
      node = d["entries"]
      for k in key[:-1]:
        node = node[k]
      del node[key[-1]]
      valid = key[-1] == "dispatch_overhead"   # optional (predict defaults it to 0)
      desc = f"no entry {'/'.join(key)}"
    elif what == "meta":
      old = d["meta"].get(op[1])
      d["meta"][op[1]] = op[2]
      valid = op[2] == old and type(op[2]) is type(old)
      if op[1] == "backend":
        valid = op[2] in ("xla", "onnxruntime")
      if op[1] == "batch":
        valid = _is_int(op[2]) and op[2] >= 1
      desc = f"meta.{op[1]} = {op[2]!r}"
    elif what == "drop_meta":
      del d["meta"][op[1]]
      valid = op[1] == "backend"   # optional: tables from before the choice were all XLA
      desc = f"no meta.{op[1]}"
    elif what == "top":
      desc = op[1]
      d = {"no meta": {"entries": d["entries"]}, "no entries": {"meta": d["meta"]}, "list": [d],
           "null": None, "entries list": {"meta": d["meta"], "entries": [1]},
           "meta list": {"meta": [1], "entries": d["entries"]}}[op[1]]
    elif what == "text":
      full = json.dumps(d)
      text = {"truncate": full[:int(op[2] * (len(full) - 1))], "garbage": "{meta: x",
              "empty": ""}[op[1]]
      desc = f"text {op[1]}"
    if what == "path":
      p = fx.missing + ".json" if op[1] == "missing" else os.path.dirname(p)
      desc = f"path is {op[1]}"
    else:
      with open(p, "w") as f:
        f.write(text if text is not None else json.dumps(d))

    def run(p=p):
      t = search_lib.load_device_table(p, sp, num_classes, shape, complete=True)   # as run_search
      return [t.predict(a) for a in archs]

    cases.append(Case("latency_table", desc, run, file_names(p) + ("latency_table", "latency table"),
                      valid=valid, workdir=os.path.dirname(p) if os.path.isdir(
                          os.path.dirname(p)) else None))
  return cases


# ---- search results (pareto.json / config.json of a search workdir, read by export)
def gen_search_results(n, fx):
  """A search workdir with a corrupt pareto.json or config.json, as export reads it
  (export_lib.plan_export: every check before weights are loaded)."""
  st = _st()
  from evonas_jax import export_lib
  sp = _tiny_space()
  ub = [int(u) for u in sp.upper_bounds]
  slices = [sp.depth_slice(s) for s in range(sp.num_stages)]
  cfg_keys = ["evaluator", "seed", "space", "preset", "supernet_workdir", "data"]
  strat = st.one_of(
      st.tuples(st.just("valid"), st.integers(0, 2)),
      st.tuples(st.just("genome"), _genome_strategy(ub, slices)),
      st.tuples(st.just("row"), st.sampled_from(["not a dict", "no genome", "genome null",
                                                 "empty list", "not a list", "no pareto",
                                                 "null"])),
      st.tuples(st.just("text"), st.sampled_from(["pareto.json", "config.json"]),
                st.sampled_from(["truncate", "garbage", "empty", "delete", "dir"]),
                st.floats(0, 1, allow_nan=False)),
      st.tuples(st.just("config"), st.sampled_from(cfg_keys), st.sampled_from(
          ["drop", None, "x", 3, [], {}, "<missing>", "<file>"])),
      st.tuples(st.just("select"), st.sampled_from(["3", "-1", "latency_ms<=0", "latency_ms<=1e9",
                                                   "nan", "error<=nan", "0,1"])))
  cases = []
  for op in draw(strat, n):
    wd = _link_copy(fx.search_workdir, fx.fresh("search"))
    pareto_p, cfg_p = os.path.join(wd, "pareto.json"), os.path.join(wd, "config.json")
    rows = json.load(open(pareto_p))["pareto"]
    cfg = json.load(open(cfg_p))
    what, select, valid, desc = op[0], "0", False, op[0]
    if what == "valid":
      select, valid, desc = str(op[1]), True, f"valid, row {op[1]}"
    elif what == "genome":
      desc, g = _build_genome(op[1], ub, slices)
      rows[0]["genome"] = g.tolist() if isinstance(g, np.ndarray) else g
      try:
        json.dumps(rows)
      except (TypeError, ValueError):
        rows[0]["genome"] = repr(g)
      valid = genome_ok(rows[0]["genome"], ub, slices)
      desc = f"row 0 genome {desc}"
      _replace(pareto_p, json.dumps({"pareto": rows}).encode())
    elif what == "row":
      desc = op[1]
      obj = {"not a dict": {"pareto": [1] + rows[1:]}, "no genome": {"pareto": [
          {k: v for k, v in rows[0].items() if k != "genome"}] + rows[1:]},
             "genome null": {"pareto": [{**rows[0], "genome": None}] + rows[1:]},
             "empty list": {"pareto": []}, "not a list": {"pareto": {"0": rows[0]}},
             "no pareto": {"front": rows}, "null": None}[op[1]]
      _replace(pareto_p, json.dumps(obj).encode())
    elif what == "text":
      target = os.path.join(wd, op[1])
      full = open(target).read()
      if op[2] == "truncate":
        _replace(target, full[:int(op[3] * (len(full) - 1))].encode())
      elif op[2] == "garbage":
        _replace(target, b"{pareto: [")
      elif op[2] == "empty":
        _replace(target, b"")
      elif op[2] == "delete":
        os.unlink(target)
      else:
        os.unlink(target)
        os.makedirs(target)
      desc = f"{op[1]} {op[2]}"
    elif what == "config":
      key, v = op[1], op[2]
      if v == "drop":
        cfg.pop(key, None)
      else:
        cfg[key] = {"<missing>": fx.missing, "<file>": fx.a_file}.get(v, v) if isinstance(
            v, str) else v
      # The fixture search has a supernet_workdir: the space / preset / data of the supernet's
      # own config.json are the ones used, the search's copies are not read.
      valid = key in ("space", "preset", "data") or (
          key == "supernet_workdir" and v in ("drop", None, "")) or (   # drop: a random supernet
          key == "seed" and _is_int(v))
      desc = f"config.json {key} = {v!r}"
      _replace(cfg_p, json.dumps(cfg).encode())
    elif what == "select":
      select = op[1]
      valid = select_ok(select, rows, sp)
      desc = f"--select={select}"
    out = os.path.join(fx.root, "cases", "export_out_never_made")
    names = file_names(wd) + ("pareto.json", "config.json", "--select", "select", "genome",
                              "supernet_workdir")
    cases.append(Case("search_results", desc, (lambda wd=wd, s=select, o=out: export_lib.plan_export(
        wd, s, o)), names, valid=valid, workdir=wd))
  return cases


# ---- run directories (what train / search / finetune open before any work)
def _open_run_dir(path, cfg):
  from evonas_jax import train_config, workdir as workdir_lib
  train_config.check_workdir(path)
  return workdir_lib.open_workdir(path, cfg)


def gen_workdir(n, fx):
  """--workdir of train / search / finetune: missing, a file, read-only, another run's, a
  corrupt config.json / results.json (train_config.check_workdir + workdir.open_workdir)."""
  st = _st()
  cfg = load_config("train")
  canon = json.loads(cfg.to_json_best_effort(sort_keys=True))
  strat = st.one_of(
      st.tuples(st.just("new"), st.integers(0, 3)), st.tuples(st.just("resume")),
      st.tuples(st.just("empty_dir")), st.tuples(st.just("file")),
      st.tuples(st.just("under_file"), st.integers(1, 3)), st.tuples(st.just("read_only")),
      st.tuples(st.just("foreign"), st.sampled_from(sorted(canon)), st.sampled_from(
          [0, -1, "x", None, 12345])),
      st.tuples(st.just("config_json"), _bytes_ops()),
      st.tuples(st.just("config_json_type"), st.sampled_from(["[]", "null", "3", "\"x\""])),
      st.tuples(st.just("finished"), st.sampled_from(["ok", "garbage", "empty"])),
      st.tuples(st.just("config_dir")), st.tuples(st.just("blank"), st.sampled_from(["", " "])))
  cases = []
  for op in draw(strat, n):
    what, valid, wd, path, skip = op[0], False, None, None, None
    if what == "new":
      path = os.path.join(fx.fresh("wd_new"), *["sub"] * op[1])
      valid = True
    elif what == "blank":
      path = op[1]
    elif what == "file":
      path = fx.a_file
    elif what == "under_file":
      path = os.path.join(fx.a_file, *["sub"] * op[1])
    else:
      wd = path = fx.fresh_dir("wd")
      if what == "empty_dir":
        valid = True
      elif what == "resume":
        with open(os.path.join(wd, "config.json"), "w") as f:
          json.dump(canon, f, indent=2, sort_keys=True)
        valid = True
      elif what == "read_only":
        with open(os.path.join(wd, "config.json"), "w") as f:
          json.dump(canon, f, indent=2, sort_keys=True)
        os.chmod(wd, 0o555)
        if fx.is_root:
          skip = "running as root: a read-only chmod is not enforced"
      elif what == "foreign":
        other = dict(canon)
        other[op[1]] = op[2]
        if other == canon:   # not another run's config after all (e.g. 0 for 0.0): skip
          continue
        with open(os.path.join(wd, "config.json"), "w") as f:
          json.dump(other, f)
      elif what == "config_json":
        with open(os.path.join(wd, "config.json"), "w") as f:
          json.dump(canon, f, indent=2, sort_keys=True)
        _apply_bytes(os.path.join(wd, "config.json"), op[1])
        try:   # deleted: a new run (valid)
          with open(os.path.join(wd, "config.json")) as f:
            same_json = json.load(f) == canon
        except FileNotFoundError:
          valid = True
        except (OSError, ValueError):
          same_json = False
        else:
          if same_json:   # still the same config (e.g. a newline appended): no corruption
            continue      # after all (a resume rewrites config.json canonically: not a case)
      elif what == "config_json_type":
        with open(os.path.join(wd, "config.json"), "w") as f:
          f.write(op[1])
      elif what == "finished":
        with open(os.path.join(wd, "config.json"), "w") as f:
          json.dump(canon, f, indent=2, sort_keys=True)
        with open(os.path.join(wd, "results.json"), "w") as f:
          f.write({"ok": "{}", "garbage": "{res", "empty": ""}[op[1]])
      elif what == "config_dir":
        os.makedirs(os.path.join(wd, "config.json"))
    desc = what + (f" {op[1:]}" if len(op) > 1 else "")
    names = ("workdir", "config.json", "results.json") + (file_names(path) if path.strip() else ())
    cases.append(Case("workdir", desc, (lambda p=path: _open_run_dir(p, cfg)), names, valid=valid,
                      workdir=wd, skip=skip))
  return cases


# =========================================================================== registry
KINDS: dict[str, Callable] = {
    "genome_evonas": gen_genome_evonas, "genome_autoformer": gen_genome_autoformer,
    "genome_nb201": gen_genome_nb201, "arch_evonas": gen_arch_evonas, "arch_nb201": gen_arch_nb201,
    "config_train": gen_config_train, "config_search": gen_config_search,
    "config_finetune": gen_config_finetune, "config_convert": gen_config_convert,
    "args_export": gen_args_export, "args_convert": gen_args_convert,
    "args_prepare": gen_args_prepare, "idx_file": gen_idx_file, "tfds_files": gen_tfds_files,
    "checkpoint_files": gen_checkpoint_files, "latency_table": gen_latency_table,
    "search_results": gen_search_results, "workdir": gen_workdir,
    "nonfinite_images": gen_nonfinite_images,
}


def make_cases(kind: str, n: int, fx: Fixtures) -> list[Case]:
  """About `n` cases of `kind` (hypothesis-drawn, the same on every run)."""
  if kind not in KINDS:
    raise ValueError(f"unknown kind {kind!r}; allowed: {sorted(KINDS)}")
  if kind == "args_prepare":   # a valid prepare run writes a dataset: at most a few of them
    return gen_args_prepare(n, fx, allow_writes=max(1, n // 200))
  return KINDS[kind](n, fx)


def restore_permissions(root: str) -> None:
  """chmod u+rwx everything under root (read-only cases), so it can be deleted."""
  for dirpath, dirnames, _ in os.walk(root):
    for d in dirnames:
      p = os.path.join(dirpath, d)
      try:
        os.chmod(p, os.stat(p).st_mode | stat.S_IRWXU)
      except OSError:
        pass


# =========================================================================== real CLI runs
CLI_KINDS = ("config_train", "config_search", "config_finetune", "config_convert", "args_export",
             "args_convert", "args_prepare")
_PY_MODULES = {"train": "evonas_jax.train", "search": "evonas_jax.search",
               "finetune": "evonas_jax.finetune", "convert": "evonas_jax.convert",
               "export": "evonas_jax.export", "prepare": "evonas_jax.prepare"}


def cli_cases(n: int, fx: Fixtures, kinds: Sequence[str] = CLI_KINDS,
              per_kind_pool: int = 60) -> list[Case]:
  """`n` invalid cases of the config / flag kinds that have a CLI form, spread over the kinds
  (round robin, then evenly over each kind's pool): each is run as `python -m evonas_jax.<cli>`
  by `check_cli`. Valid ones are left out (a valid run trains / searches / exports for real)."""
  pools = []
  for k in kinds:
    cs = [c for c in make_cases(k, per_kind_pool, fx) if c.cli and not c.valid and not c.skip]
    pools.append(cs)
  out, i = [], 0
  while len(out) < n and any(pools):
    pool = pools[i % len(pools)]
    if pool:
      j = (len(out) * 7919) % len(pool)
      out.append(pool.pop(j))
    i += 1
  return out


def _cli_argv(case: Case, fx: Fixtures) -> tuple[list[str], list[str]]:
  """(argv for python, fresh paths the run may create)."""
  cli, *args = case.cli
  fresh = []
  argv = []
  for a in args:
    if "<fresh>" in a:
      p = fx.fresh("cli_to")
      fresh.append(p)
      a = a.replace("<fresh>", p)
    argv.append(a)
  if cli in ("train", "search", "finetune") and not any(a.startswith("--workdir") for a in argv):
    p = fx.fresh("cli_workdir")
    fresh.append(p)
    argv += ["--workdir", p]
  return [sys.executable, "-m", _PY_MODULES[cli], *argv], fresh


_TB_FRAME = re.compile(r'File "([^"]+)", line \d+')


def check_cli(case: Case, fx: Fixtures, timeout: float = 240.0) -> Result:
  """Runs `case.cli` as a real subprocess: a clear error is a non-zero exit, a message on
  stderr naming the field / flag / file, no traceback ending outside this project (a traceback
  ending in project code is allowed but flagged: traceback_shown), the workdir unchanged."""
  argv, fresh = _cli_argv(case, fx)
  before = snapshot(case.workdir) if case.workdir else None
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="3")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  t0 = time.perf_counter()
  res = Result(case.kind + ":cli", " ".join(argv[2:]).replace(fx.root, "<tmp>"), case.valid, "")
  try:
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
  except subprocess.TimeoutExpired:
    res.outcome, res.message, res.seconds = "timeout", f"no exit within {timeout:.0f} s", timeout
    return res
  res.seconds = time.perf_counter() - t0
  after = snapshot(case.workdir) if case.workdir else None
  res.workdir_checked = before is not None
  res.workdir_unchanged = unchanged(before, after)
  err = p.stderr or ""
  frames = _TB_FRAME.findall(err) if "Traceback (most recent call last)" in err else []
  res.traceback_shown = bool(frames)
  lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(
      ("WARNING", "I0", "W0", "E0"))]
  res.message = "\n".join(lines[-3:])[:600]
  if p.returncode == 0:
    res.outcome = "silent_acceptance"
    res.message = "exit status 0: " + (p.stdout or "")[-300:]
  elif frames and not os.path.abspath(frames[-1]).startswith(PKG_DIR):
    res.outcome = "deep_origin"
    res.message += f" [traceback ends in {_rel(frames[-1])}]"
  elif p.returncode < 0:
    res.outcome, res.message = "unclear_type", f"killed by signal {-p.returncode}"
  elif not names_match(err, case.names):
    res.outcome = "unnamed"
  else:
    res.outcome = "clear"
  if res.outcome == "clear" and not res.workdir_unchanged:
    res.outcome = "workdir_changed"
  for f in fresh:   # a refused run must not leave a half-made output behind either
    if os.path.exists(f) and os.listdir(f) if os.path.isdir(f) else os.path.exists(f):
      if res.outcome == "clear":
        res.outcome, res.message = "workdir_changed", f"left {f} behind; " + res.message
  return res
