"""Budget selection over a Pareto front (evonas_jax.front_select): hand-written fronts whose
answers are read off by eye, and the errors a user sees for a bad or unmeetable budget."""
import pytest

from evonas_jax import front_select

# error rises as latency falls, as on a real front; row 4 ties row 3 on error but is slower.
ROWS = [
    {"error": 0.10, "accuracy": 0.90, "latency_ms": 5.0, "macs": 9e6, "params": 2.0e6},
    {"error": 0.15, "accuracy": 0.85, "latency_ms": 3.0, "macs": 6e6, "params": 1.5e6},
    {"error": 0.20, "accuracy": 0.80, "latency_ms": 2.5, "macs": 4e6, "params": 1.1e6},
    {"error": 0.30, "accuracy": 0.70, "latency_ms": 1.0, "macs": 2e6, "params": 0.4e6},
    {"error": 0.30, "accuracy": 0.70, "latency_ms": 1.2, "macs": 1e6, "params": 0.3e6},
]


@pytest.mark.parametrize("expr, want", [
    ("latency_ms<=2.5", 2),          # inclusive bound hits row 2 exactly
    ("latency_ms<2.5", 3),           # strict: row 2 out; rows 3 and 4 tie on error, 3 is faster
    ("latency_ms <= 100", 0),        # everything fits: the most accurate
    ("latency_ms<=3 & params<1.2e6", 2),
    ("latency_ms<=3 and macs<=1e6", 4),
    ("accuracy>=0.85", 0),
    ("macs==6e6", 1),
])
def test_choose(expr, want):
  assert front_select.choose(ROWS, expr) == want


def test_parse():
  assert front_select.parse("latency_ms<=2.5&params>1e3") == [("latency_ms", "<=", 2.5),
                                                              ("params", ">", 1000.0)]
  assert front_select.is_constraint("latency_ms<=2.5")
  assert not front_select.is_constraint("0,1,2")
  assert not front_select.is_constraint(3)


def test_unmeetable_budget_names_the_tightest_value():
  with pytest.raises(ValueError, match=r"smallest latency_ms on the front is 1\b"):
    front_select.choose(ROWS, "latency_ms<0.5")
  with pytest.raises(ValueError, match=r"largest accuracy on the front is 0.9\b"):
    front_select.choose(ROWS, "accuracy>0.95")


@pytest.mark.parametrize("expr, match", [
    ("latency<=2", r"unknown field 'latency'.*'latency_ms'"),
    ("latency_ms=>2", r"cannot read"),
    ("latency_ms<=fast", r"not a number"),
    ("latency_ms<=inf", r"finite"),
    ("&", r"empty budget"),
])
def test_bad_expressions(expr, match):
  with pytest.raises(ValueError, match=match):
    front_select.choose(ROWS, expr)


def test_empty_front():
  with pytest.raises(ValueError, match="empty"):
    front_select.choose([], "latency_ms<=1")
