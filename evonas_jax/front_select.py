"""Choose a Pareto-front member by a budget: "the most accurate subnet under 2.5 ms".

    choose(rows, "latency_ms<=2.5")                 -> row index
    choose(rows, "latency_ms<2.5 & params<=1e6")    -> row index

`rows` are the records of a search's pareto.json (dicts with numeric objective fields such as
"error", "accuracy" / "abs_rel" / "miou", "latency_ms", "measured_latency_ms", "macs",
"params"). An expression is one or more clauses `FIELD OP NUMBER` joined by `&` (or the word
`and`); OP is one of <=, <, >=, >, ==. Of the rows that satisfy every clause the one with the
lowest "error" (every task's search minimises its error, so this is the most accurate one; ties
go to the lower latency, then the lower row index) is chosen.

Errors name the problem: an unknown field lists the fields the rows have; an unsatisfiable
budget reports, per clause, the tightest value the front offers (e.g. "the fastest member has
latency_ms = 3.1").
"""
from __future__ import annotations

import math
import operator
import re

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
       "==": operator.eq}
# Longest operators first so "<=" is not read as "<" followed by "=".
_CLAUSE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*(\S+)\s*$")
_SPLIT = re.compile(r"\s*(?:&&?|\band\b)\s*")


def is_constraint(text) -> bool:
  """Whether `text` reads as a budget expression (it has a comparison operator)."""
  return isinstance(text, str) and any(op in text for op in ("<", ">", "=="))


def parse(expr: str) -> list[tuple[str, str, float]]:
  """'latency_ms<=2.5 & params<1e6' -> [("latency_ms", "<=", 2.5), ("params", "<", 1e6)]."""
  clauses = [c for c in _SPLIT.split(expr.strip()) if c]
  if not clauses:
    raise ValueError(f"--select={expr!r}: empty budget; expected e.g. 'latency_ms<=2.5'")
  out = []
  for c in clauses:
    m = _CLAUSE.match(c)
    if not m:
      raise ValueError(f"--select={expr!r}: cannot read {c!r}; a clause is FIELD OP NUMBER with "
                       f"OP one of {list(OPS)}, clauses joined by '&' (e.g. "
                       "'latency_ms<=2.5 & macs<5e6')")
    try:
      value = float(m.group(3))
    except ValueError:
      raise ValueError(f"--select={expr!r}: {m.group(3)!r} in {c!r} is not a number") from None
    if not math.isfinite(value):
      raise ValueError(f"--select={expr!r}: {c!r} needs a finite number")
    out.append((m.group(1), m.group(2), value))
  return out


def _numeric_fields(rows: list[dict]) -> list[str]:
  keys = set()
  for r in rows:
    keys |= {k for k, v in r.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  return sorted(keys)


def choose(rows: list[dict], expr: str) -> int:
  """Index of the lowest-error row satisfying every clause of `expr` (see the module doc)."""
  if not rows:
    raise ValueError(f"--select={expr!r}: the front is empty")
  clauses = parse(expr)
  fields = _numeric_fields(rows)
  for key, _, _ in clauses:
    if key not in fields:
      raise ValueError(f"--select={expr!r}: unknown field {key!r}; the front's rows have "
                       f"{fields}")
  if "error" not in fields:
    raise ValueError("the front's rows have no 'error' field to rank by; fields: "
                     f"{fields}")
  ok = [i for i, r in enumerate(rows)
        if all(key in r and OPS[op](float(r[key]), value) for key, op, value in clauses)]
  if not ok:
    notes = []
    for key, op, value in clauses:
      vals = [float(r[key]) for r in rows if key in r]
      best = min(vals) if op in ("<", "<=") else max(vals) if op in (">", ">=") else None
      if op == "==":
        notes.append(f"{key} takes the values {sorted(set(vals))[:8]} on the front")
      else:
        word = "smallest" if op in ("<", "<=") else "largest"
        sat = sum(OPS[op](v, value) for v in vals)
        notes.append(f"{key} {op} {value:g}: {sat}/{len(vals)} members satisfy it; the {word} "
                     f"{key} on the front is {best:g}")
    raise ValueError(f"--select={expr!r}: no member of the {len(rows)}-row front satisfies every "
                     "clause (" + "; ".join(notes) + ")")
  return min(ok, key=lambda i: (float(rows[i]["error"]),
                                float(rows[i].get("latency_ms", 0.0)), i))
