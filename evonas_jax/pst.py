"""Progressive Supernet Training (PST) schedule and per-step subnet sampling (research §3.5).

The official PST is 8 separate runs, each opening more choices and sampling more subnets per step:

  stage  name        opened choices                         k   KITTI/NYU epochs (warmup)
  0      maxnet      everything at maximum                  1   40 (3)
  1      d_state-1   d_state in its top 2 values            1    5 (0)
  2      d_state-2   d_state all                            1   20 (1)
  3      mlp-1       + mlp_ratio in its top 3 values        2    5 (0)
  4      mlp-2       + mlp_ratio all                        2   20 (1)
  5      expand-1    + expand in its top 3 values           4    5 (0)
  6      expand-2    + expand all                           4   20 (1)
  7      depth       + random depth bits                    4   25 (1)

Here the stages are one run: `PSTSchedule` scales the epoch column to `num_steps`, and maps any
global step to (stage, step within stage), so a run killed mid-stage resumes mid-stage. The
learning-rate schedule restarts at every stage, as the official per-stage runs do (optional).

Sampling per step (`sample_step_genomes`) is a pure function of (seed, step): every data-parallel
replica and every host draws the same subnets (the official code re-seeds numpy per epoch on
every rank for the same reason), and a resumed run draws exactly what the uninterrupted run drew.
Rules: "uniform" (official: k random subnets from the opened choices) and "sandwich" (beyond the
official code: largest + smallest + k-2 random of the opened choices; the largest is first so the
trainer can distil the others from it in place).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from evonas_jax.space import SearchSpace

SAMPLING_RULES = ("uniform", "sandwich")

# (name, {gene kind: how many of the largest values are open, or "all"}, k, epochs, warmup epochs)
OFFICIAL_STAGES = (
    ("maxnet", {}, 1, 40, 3),
    ("d_state-1", {"d_state": 2}, 1, 5, 0),
    ("d_state-2", {"d_state": "all"}, 1, 20, 1),
    ("mlp-1", {"d_state": "all", "mlp_ratio": 3}, 2, 5, 0),
    ("mlp-2", {"d_state": "all", "mlp_ratio": "all"}, 2, 20, 1),
    ("expand-1", {"d_state": "all", "mlp_ratio": "all", "expand": 3}, 4, 5, 0),
    ("expand-2", {"d_state": "all", "mlp_ratio": "all", "expand": "all"}, 4, 20, 1),
    ("depth", {"d_state": "all", "mlp_ratio": "all", "expand": "all", "depth": "all"}, 4, 25, 1),
)


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  name: str
  opened: dict           # gene kind -> number of top values opened, or "all"
  k: int                 # subnets per step
  start: int             # first global step of the stage
  num_steps: int
  warmup_steps: int

  @property
  def end(self) -> int:
    return self.start + self.num_steps


class PSTSchedule:
  """Global step -> PST stage. Built from the official table or from a single "all open" stage.

  Args:
    num_steps: total training steps of the run.
    enabled: False gives one stage with every choice open (the "random" baseline, research §3.6).
    k_max: caps the subnets per step (the official 4 is expensive on CPU); k_scale multiplies
      the official k before the cap.
    Hybrid spaces: block types are open from stage 0 (each type has its own weights, so every
    type needs training from the start).
    stages: optional subset of the official stage names, in order (e.g. a short quickstart).
  """

  def __init__(self, num_steps: int, *, enabled: bool = True, k_max: int = 4,
               k_final: int | None = None,
               stages: Sequence[str] | None = None, warmup_steps_if_disabled: int = 0):
    if num_steps < 1:
      raise ValueError(f"num_steps must be >= 1; got {num_steps}")
    if k_max < 1:
      raise ValueError(f"pst.k_max must be >= 1; got {k_max}")
    if not enabled:
      table = [("all-open", {"d_state": "all", "mlp_ratio": "all", "expand": "all",
                             "depth": "all"}, k_final or k_max, 1, 0)]
    else:
      names = [s[0] for s in OFFICIAL_STAGES]
      chosen = list(stages) if stages else names
      bad = [n for n in chosen if n not in names]
      if bad:
        raise ValueError(f"pst.stages has unknown stage(s) {bad}; allowed (in order): {names}")
      if [names.index(n) for n in chosen] != sorted(names.index(n) for n in chosen):
        raise ValueError(f"pst.stages must keep the official order {names}; got {chosen}")
      table = [s for s in OFFICIAL_STAGES if s[0] in chosen]
    total_epochs = sum(t[3] for t in table)
    bounds = np.round(np.cumsum([0] + [t[3] for t in table]) * num_steps / total_epochs)
    bounds = bounds.astype(int)
    self.stages: list[Stage] = []
    for i, (name, opened, k, ep, wu) in enumerate(table):
      n = int(bounds[i + 1] - bounds[i])
      if n == 0:
        continue
      warm = warmup_steps_if_disabled if not enabled else int(round(n * wu / ep))
      self.stages.append(Stage(len(self.stages), name, dict(opened), max(1, min(k, k_max)),
                               int(bounds[i]), n, min(warm, n - 1)))
    self.num_steps = num_steps

  def stage_at(self, step: int) -> Stage:
    """The stage that global step `step` (0-based) belongs to."""
    for st in self.stages:
      if step < st.end:
        return st
    return self.stages[-1]

  def choices(self, space: SearchSpace, stage: Stage) -> dict:
    """Opened choices of `stage` in the format of `SearchSpace.sample(choices=...)`."""
    out = {}
    for kind, values in (("mlp_ratio", space.mlp_choices), ("d_state", space.d_state_choices),
                         ("expand", space.expand_choices)):
      n = stage.opened.get(kind, 1)
      out[kind] = tuple(sorted(values)) if n == "all" else tuple(sorted(values)[-n:])
    out["depth"] = stage.opened.get("depth") == "all"
    return out

  def describe(self) -> str:
    return "; ".join(f"{s.index}:{s.name} steps {s.start}-{s.end - 1} k={s.k}" for s in self.stages)


def sample_step_genomes(space: SearchSpace, schedule: PSTSchedule, step: int, seed: int,
                        rule: str = "uniform") -> np.ndarray:
  """The (k, G) int32 genomes trained at global `step`; a pure function of (seed, step)."""
  if rule not in SAMPLING_RULES:
    raise ValueError(f"sampling.rule must be one of {SAMPLING_RULES}; got {rule!r}")
  stage = schedule.stage_at(step)
  choices = schedule.choices(space, stage)
  key = int(np.random.default_rng([seed, step]).integers(2**31))
  if rule == "uniform" or stage.k < 2:
    return space.sample(key, num=stage.k, choices=choices)
  big, small = _extreme_genome(space, choices, max), _extreme_genome(space, choices, min)
  rest = space.sample(key, num=stage.k - 2, choices=choices) if stage.k > 2 else None
  parts = [big[None], small[None]] + ([rest] if rest is not None else [])
  return np.concatenate(parts).astype(np.int32)


def _extreme_genome(space: SearchSpace, choices: dict, pick) -> np.ndarray:
  """Largest/smallest genome among the opened choices (closed depth = every block)."""
  g = []
  for gene in space.genes:
    kind = gene.name.split("[")[0]
    if kind == "depth":
      g.append(None)
      continue
    opened = choices.get(kind)
    allowed = [i for i, v in enumerate(gene.values) if opened is None or v in opened]
    if kind == "block_type":
      # Block types have no size order: the extremes keep the official layout of the stage.
      g.append(gene.values.index(space.default_types[gene.stage]))
    else:
      g.append(pick(allowed, key=lambda i: gene.values[i]))
  g = np.array([0 if v is None else v for v in g], np.int32)
  for s in range(space.num_stages):
    sl = space.depth_slice(s)
    g[sl] = 1
    if pick is min and choices.get("depth"):
      g[sl] = 0
      g[sl.start] = 1
  return g
