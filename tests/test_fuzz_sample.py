"""CI sample of the invalid-input fuzzer (benchmarks/fuzz_inputs.py runs the full >= 10,000).

The same generators (`evonas_jax.tools.fuzz`), derandomized hypothesis draws (the same cases on
every run), a few hundred in-process cases across every kind and a few real
`python -m evonas_jax.<cli>` runs: every invalid input must end in a clear error naming the field
or file, every valid input must be accepted, and no workdir may change.
"""
import os

import pytest

from evonas_jax.tools import fuzz

# Per-kind sample sizes: ~25 in-process cases per kind (file kinds copy a small fixture each).
N_PER_KIND = {k: 25 for k in fuzz.KINDS}
N_PER_KIND.update({"tfds_files": 12, "checkpoint_files": 15, "args_prepare": 15})


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
  root = tmp_path_factory.mktemp("fuzz")
  yield fuzz.Fixtures(str(root))
  fuzz.restore_permissions(str(root))


def _report(bad):
  return "\n".join(f"{r.kind} {r.outcome}: {r.input[:150]} -> {r.message[:300]}" for r in bad)


@pytest.mark.parametrize("kind", list(fuzz.KINDS))
def test_fuzz_kind(kind, fx):
  cases = fuzz.make_cases(kind, N_PER_KIND[kind], fx)
  assert cases, kind
  results = [fuzz.check(c) for c in cases]
  bad = [r for r in results if not r.good]
  assert not bad, _report(bad)
  assert all(r.workdir_unchanged for r in results)
  # The sample exercises both sides: some invalid inputs refused, and (for kinds that have
  # them in this sample) valid inputs accepted.
  assert any(r.counted and r.outcome == "clear" for r in results), kind


def test_checker_flags_unclear_errors():
  """The checker itself: a KeyError, a message naming nothing, a silent acceptance and a
  rejected valid input are all bad outcomes."""
  def raise_(e):
    def run():
      raise e
    return run
  assert fuzz.check(fuzz.Case("k", "x", raise_(KeyError("seed")), ("seed",))).outcome == "unclear_type"
  assert fuzz.check(fuzz.Case("k", "x", raise_(ValueError("bad")), ("seed",))).outcome in (
      "deep_origin", "unnamed")
  assert fuzz.check(fuzz.Case("k", "x", lambda: 1, ("seed",))).outcome == "silent_acceptance"
  assert fuzz.check(fuzz.Case("k", "x", raise_(ValueError("seed")), ("seed",),
                              valid=True)).outcome == "rejected_valid"
  from evonas_jax.train_config import validate_train_config
  cfg = fuzz.load_config("train")
  cfg.unlock()
  cfg.batch_size = -1
  r = fuzz.check(fuzz.Case("k", "batch_size=-1", lambda: validate_train_config(cfg),
                           fuzz.field_names("batch_size")))
  assert r.outcome == "clear", r


@pytest.mark.skipif(os.environ.get("EVONAS_SKIP_CLI_FUZZ") == "1", reason="EVONAS_SKIP_CLI_FUZZ")
def test_fuzz_cli_sample(fx):
  """3 real CLI runs (an unknown --config field of train, a bad export flag, a bad prepare
  flag): a non-zero exit, a message naming the field, no traceback, the workdir unchanged."""
  picks = []
  for kind, want in (("config_train", lambda c: "=1" in c.input and "--config." in c.input),
                     ("args_export", lambda c: True), ("args_prepare", lambda c: True)):
    pool = [c for c in fuzz.make_cases(kind, 30, fx) if c.cli and not c.valid and not c.skip]
    pool = [c for c in pool if want(c)] or pool
    picks.append(pool[0])
  results = [fuzz.check_cli(c, fx, timeout=120) for c in picks]
  bad = [r for r in results if r.outcome != "clear"]
  assert not bad, _report(bad)
  assert all(r.workdir_unchanged for r in results)
  assert not any(r.traceback_shown for r in results), _report(results)
