"""The claims table's tests (experiments/claims.py) against hand computations."""

import numpy as np
import pytest

from experiments import claims


def test_unpaired_bound_is_the_independent_two_sample_z():
  a, b = 4400 / 6040, 4200 / 6040
  row = claims.unpaired('A', a, 'B', b, 'runs elsewhere')
  se = np.sqrt(a * (1 - a) / 6040 + b * (1 - b) / 6040)
  from scipy import stats  # pylint: disable=g-import-not-at-top
  assert row['p_upper_bound'] == pytest.approx(stats.norm.sf((a - b) / se))
  assert row['verdict'] == 'supported without pairing'  # z = 3.9
  close = claims.unpaired('A', 4210 / 6040, 'B', 4200 / 6040, 'runs elsewhere')
  assert close['verdict'] == 'not shown (unpaired: runs elsewhere)'


def test_published_figure_inside_or_outside_our_interval():
  assert 'inside' in claims.against_published('A', 4284 / 6040, 'paper', 0.7093)['verdict']
  assert 'above' in claims.against_published('A', 4284 / 6040, 'paper', 0.730)['verdict']


def test_paired_from_ranks_sees_a_small_consistent_gain():
  rng = np.random.default_rng(0)
  b = rng.integers(0, 100, 2000)
  a = b.copy()
  improved = rng.choice(np.flatnonzero((b >= 10) & (b < 20)), 20, replace=False)
  a[improved] = 9  # 1% of the users move into the top 10, nobody moves out
  row = claims.paired_from_ranks('A', a, 'B', b)
  assert row['hr_difference'] == pytest.approx(20 / 2000)
  assert row['p_value'] < 0.001 and row['verdict'] == 'supported (p < 0.05)'
  same = claims.paired_from_ranks('A', b, 'B', b)
  assert same['p_value'] == 1.0  # no resample shows A ahead
