"""The run directory: config.json, metrics.jsonl, results, plots (DESIGN.md invariant 6).

A workdir belongs to one config. Re-using it with a different config is refused (nothing a user
made is overwritten silently); a finished run is never overwritten.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any


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
  with open(cfg_path, "w") as f:
    json.dump(new, f, indent=2, sort_keys=True)
  return workdir


class MetricWriter:
  """Appends one JSON object per line to <workdir>/metrics.jsonl."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, step: int, **metrics: Any) -> None:
    row = {"step": int(step), "time": time.time()}
    row.update({k: (float(v) if hasattr(v, "__float__") else v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]
