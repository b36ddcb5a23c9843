"""Progressive shrinking schedule and per-step subnet sampling (research §3.5)."""
import numpy as np
import pytest

from evonas_jax.pst import OFFICIAL_STAGES, PSTSchedule, sample_step_genomes
from evonas_jax.space import get_space


def test_official_schedule_scales_epochs_and_covers_every_step():
  s = PSTSchedule(1400, k_max=4)
  # 140 official epochs -> 10 steps per epoch; stage lengths follow the epoch column exactly.
  assert [st.num_steps for st in s.stages] == [10 * t[3] for t in OFFICIAL_STAGES]
  assert [st.k for st in s.stages] == [t[2] for t in OFFICIAL_STAGES]
  assert [st.warmup_steps for st in s.stages] == [10 * t[4] for t in OFFICIAL_STAGES]
  assert s.stages[0].start == 0 and s.stages[-1].end == 1400
  for a, b in zip(s.stages, s.stages[1:]):
    assert a.end == b.start
  assert s.stage_at(399).name == "maxnet" and s.stage_at(400).name == "d_state-1"
  assert s.stage_at(1399).name == "depth"


def test_opened_choices_follow_the_table():
  space = get_space("evonas", "tiny")
  s = PSTSchedule(1400, k_max=4)
  by = {st.name: s.choices(space, st) for st in s.stages}
  assert by["maxnet"] == {"mlp_ratio": (4.0,), "d_state": (64,), "expand": (4.0,), "depth": False}
  assert by["d_state-1"]["d_state"] == (48, 64)
  assert by["mlp-1"]["mlp_ratio"] == (3.0, 3.5, 4.0)
  assert by["expand-1"]["expand"] == (2.0, 3.0, 4.0) and by["expand-1"]["depth"] is False
  assert by["depth"]["depth"] is True and len(by["depth"]["expand"]) == len(space.expand_choices)


def test_sampled_genomes_respect_the_stage_and_are_a_function_of_seed_and_step():
  space = get_space("evonas", "tiny")
  s = PSTSchedule(1400, k_max=4)
  for step in (0, 450, 700, 1399):
    st = s.stage_at(step)
    g = sample_step_genomes(space, s, step, seed=3)
    assert g.shape == (st.k, space.genome_length)
    np.testing.assert_array_equal(g, sample_step_genomes(space, s, step, seed=3))
    ch = s.choices(space, st)
    for row in g:
      space.validate(row)
      a = space.decode(row)
      assert set(a.mlp_ratio[:3]) <= set(ch["mlp_ratio"])
      assert set(a.d_state[:3]) <= set(ch["d_state"])
      if not ch["depth"]:
        assert all(all(b) for b in a.depth)
  assert not np.array_equal(sample_step_genomes(space, s, 1399, 3),
                            sample_step_genomes(space, s, 1398, 3))


@pytest.mark.parametrize("space_name", ["evonas", "hybrid"])
def test_sandwich_is_largest_smallest_then_random(space_name):
  space = get_space(space_name, "tiny")
  s = PSTSchedule(100, enabled=False, k_max=4)
  g = sample_step_genomes(space, s, 5, seed=0, rule="sandwich")
  assert g.shape[0] == 4
  assert space.decode(g[0]) == space.largest()
  assert space.decode(g[1]) == space.smallest()
  with pytest.raises(ValueError, match="sampling.rule"):
    sample_step_genomes(space, s, 0, 0, rule="bogus")


def test_bad_schedules_are_refused_with_the_field_named():
  with pytest.raises(ValueError, match="pst.stages.*unknown"):
    PSTSchedule(100, stages=["maxnet", "nope"])
  with pytest.raises(ValueError, match="official order"):
    PSTSchedule(100, stages=["depth", "maxnet"])
  with pytest.raises(ValueError, match="k_max"):
    PSTSchedule(100, k_max=0)
