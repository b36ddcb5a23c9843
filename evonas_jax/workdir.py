"""The run directory: config.json, metrics.jsonl (+ TensorBoard events), results, plots
(DESIGN.md invariant 6).

A workdir belongs to one config. Re-using it with a different config is refused (nothing a user
made is overwritten silently); a finished run is never overwritten.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any


def write_json_atomic(path: str, obj, **dump_kwargs) -> None:
  """Writes `obj` as JSON to `path` through a temp file in the same folder + os.replace, so a
  process killed mid-write leaves either the old file or the new one, never a torn one (a torn
  results.json would make the rerun refuse the workdir as finished; a torn config.json or
  latency table would make it fail to parse)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, **dump_kwargs)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _canonical(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def open_workdir(workdir: str, config, *, allow_existing_finished: bool = False) -> str:
  """Creates `workdir` (or re-opens it for the same config) and writes config.json."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  cfg_path = os.path.join(workdir, "config.json")
  new = _canonical(config)
  if os.path.exists(cfg_path):
    with open(cfg_path) as f:
      old = json.load(f)
    if old != new:
      diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      raise FileExistsError(
          f"workdir {workdir} already holds a run with a different config (fields differing: "
          f"{diff}). Use a new --workdir, or delete that directory yourself.")
  if os.path.exists(os.path.join(workdir, "results.json")) and not allow_existing_finished:
    raise FileExistsError(f"workdir {workdir} already holds a finished run (results.json). Use a "
                          "new --workdir to train again.")
  write_json_atomic(cfg_path, new, indent=2, sort_keys=True)
  return workdir


class MetricWriter:
  """One JSON object per line in <workdir>/metrics.jsonl and, unless tensorboard=False, the same
  numbers as TensorBoard scalars in <workdir>/tensorboard/<run>/.

  Rows go to TensorBoard run `run` (tags "<group>/<key>", validation/test keys under "eval/");
  a row whose keys all start with a stream prefix (`streams`: run name -> key prefix, e.g.
  {"teacher": "teacher_"}) goes to that stream's run, with the prefix stripped from its tags.
  `rewind(step, stream)` after restoring a checkpoint drops the stream's rows after `step` from
  both (see `rewind`). Only the process that writes (process 0) should call write/rewind.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, run: str = "train",
               group: str = "train", streams: dict[str, str] | None = None):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb_root = os.path.join(workdir, "tensorboard")
    self.tensorboard, self.run, self.group = bool(tensorboard), run, group
    self.streams = dict(streams or {})
    self._tb: dict = {}              # run name -> tb_writer.TBWriter (opened on first use)
    self._purge: dict = {}           # run name -> purge step of its next event file

  # ---------------------------------------------------------------------------------- write
  def stream_of(self, row: dict) -> str | None:
    """The stream owning `row` (all its metric keys carry that stream's prefix), else None."""
    keys = [k for k in row if k not in ("step", "time")]
    for name, prefix in self.streams.items():
      if keys and all(k.startswith(prefix) for k in keys):
        return name
    return None

  def write(self, step: int, **metrics: Any) -> None:
    row = {"step": int(step), "time": time.time()}
    row.update({k: (float(v) if hasattr(v, "__float__") else v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.tensorboard:
      self._write_tb(row)

  def _write_tb(self, row: dict) -> None:
    stream = self.stream_of(row)
    run = stream or self.run
    prefix = self.streams.get(stream, "") if stream else ""
    values = {}
    for k, v in row.items():
      if k in ("step", "time") or isinstance(v, (str, bytes)) or v is None:
        continue
      if not isinstance(v, (int, float)):    # lists/dicts have no scalar view
        continue
      key = k[len(prefix):]
      grp = "eval" if key.startswith(("val_", "test_", "final_")) else self.group
      values[f"{grp}/{key}"] = v
    if run not in self._tb:
      from evonas_jax.tb_writer import TBWriter
      self._tb[run] = TBWriter(os.path.join(self.tb_root, run), self._purge.pop(run, None))
    self._tb[run].scalars(row["step"], values, wall_time=row["time"])

  def close(self) -> None:
    """Closes the TensorBoard files (every write is already flushed; optional)."""
    for w in self._tb.values():
      w.close()
    self._tb.clear()

  # --------------------------------------------------------------------------------- resume
  def rewind(self, step: int, stream: str | None = None) -> int:
    """A run resumed from a checkpoint at `step`: drops the rows of `stream` (None: the rows no
    stream owns) whose step is > `step`, so that the rows the resumed run writes again appear
    once. metrics.jsonl is rewritten atomically (temp file + os.replace; kept lines are
    byte-identical, a torn last line from a crash is dropped). The stream's TensorBoard event
    files lose the same steps, and its next event file opens with a SessionLog START at
    step + 1. Returns the number of metrics.jsonl rows dropped."""
    dropped, kept, torn = 0, [], 0
    if os.path.exists(self.path):
      with open(self.path) as f:
        lines = f.readlines()
      for line in lines:
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          torn += 1          # a line cut by a crash mid-write
          continue
        if row.get("step", 0) > step and self.stream_of(row) == stream:
          dropped += 1
        else:
          kept.append(line if line.endswith("\n") else line + "\n")
      if dropped or torn:
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
          f.writelines(kept)
          f.flush()
          os.fsync(f.fileno())
        os.replace(tmp, self.path)
        print(f"[evonas_jax] metrics.jsonl: dropped {dropped} row(s) after step {step} "
              f"written before the resume" + (f" and {torn} torn line(s)" if torn else ""),
              flush=True)
    run = stream or self.run
    if self.tensorboard:
      from evonas_jax import tb_writer
      if run in self._tb:
        self._tb.pop(run).close()
      logdir = os.path.join(self.tb_root, run)
      try:
        if tb_writer.event_files(logdir):
          tb_writer.rewind(logdir, step)
          self._purge[run] = step + 1
      except Exception as e:   # noqa: BLE001  (TensorBoard must never stop a run)
        print(f"[evonas_jax] WARNING: could not rewind the TensorBoard events in {logdir} "
              f"({type(e).__name__}: {e}); TensorBoard may show steps after {step} twice.",
              flush=True)
    return dropped

  def read(self) -> list[dict]:
    """Every row of metrics.jsonl (a last line cut short by a crash is skipped)."""
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        if i != len(lines) - 1:
          raise
    return rows
