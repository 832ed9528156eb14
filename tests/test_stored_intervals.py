"""HR intervals from a count (experiments/stored_intervals.py) against the per-user bootstrap."""

import itertools
import json

import numpy as np
import pytest

from experiments import stored_intervals
from ncf_jax import statistics


def test_resampled_hit_count_is_binomial_whoever_holds_the_hits():
  # Every one of the n^n equally likely resamples of n = 5 users, 2 of them hits: the
  # number of hits drawn has exactly the Binomial(5, 2/5) law, for either placement.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  n = 5
  for hit_users in ({0, 1}, {2, 4}):
    counts = np.zeros(n + 1, np.int64)
    for draw in itertools.product(range(n), repeat=n):
      counts[sum(u in hit_users for u in draw)] += 1
    np.testing.assert_allclose(counts / n**n, stats.binom.pmf(np.arange(n + 1), n, 2 / n),
                               rtol=1e-12)


def test_interval_from_count_is_the_exact_percentile_interval():
  # n = 7 users, 3 hits: enumerate all 7^7 resamples, take the smallest resampled mean
  # whose cumulative share reaches 2.5% (and 97.5%).
  n, hits = 7, 3
  counts = np.zeros(n + 1, np.int64)
  for draw in itertools.product(range(n), repeat=n):
    counts[sum(u < hits for u in draw)] += 1
  cdf = np.cumsum(counts) / n**n
  expected = (np.argmax(cdf >= 0.025) / n, np.argmax(cdf >= 0.975) / n)
  assert stored_intervals.hr_interval_from_count(hits, n) == pytest.approx(expected)


@pytest.mark.parametrize('arrangement_seed', [1, 2])
def test_seeded_per_user_bootstrap_agrees_with_the_count_interval(arrangement_seed):
  n, hits = 6040, 4407  # MF-192 seed 0's stored HR@10, 0.7296
  vector = np.zeros(n)
  vector[np.random.default_rng(arrangement_seed).choice(n, hits, replace=False)] = 1.0
  exact = stored_intervals.hr_interval_from_count(hits, n)
  seeded = statistics.bootstrap_ci(vector)  # 1,000 resamples, seed 0, as every record
  # The 2.5% quantile of 1,000 resampled means has a Monte Carlo error of ~0.0005 here.
  assert seeded == pytest.approx(exact, abs=0.0015)
  # The half-width is about 1.96 standard errors of a mean of 0/1 values.
  half = 1.96 * np.sqrt(hits / n * (1 - hits / n) / n)
  assert (exact[1] - exact[0]) / 2 == pytest.approx(half, rel=0.02)


def test_many_resamples_close_in_on_the_count_interval():
  n, hits = 6040, 4407
  vector = np.zeros(n)
  vector[np.random.default_rng(1).choice(n, hits, replace=False)] = 1.0
  many = statistics.bootstrap_ci(vector, num_resamples=20_000, seed=3)
  assert many == pytest.approx(stored_intervals.hr_interval_from_count(hits, n), abs=0.0005)


def test_a_stored_hr_that_is_no_count_is_an_error():
  assert stored_intervals.hits_from_hr(4407 / 6040, 6040) == 4407
  with pytest.raises(ValueError, match='not a count over 6040 users'):
    stored_intervals.hits_from_hr(0.7001, 6040)


def test_summary_entries_gain_hr_intervals_and_say_why_ndcg_has_none(tmp_path):
  summary = dict(
      table2=[dict(factors=8, hr=4142 / 6040, ndcg=0.41, hr_ci95_wald=[0, 1], ci_note='old')],
      best=dict(hr=4420 / 6040, ndcg=0.45, single_runs=[dict(hr=4407 / 6040, ndcg=0.45)]),
      baselines=[dict(model='EASE', hr=0.7, hr_ci95=[0.69, 0.71])])
  (tmp_path / 'summary.json').write_text(json.dumps(summary))
  (tmp_path / 'factors.json').write_text(json.dumps(dict(rows=[dict(model='mf', hr=0.5)])))
  stored_intervals.update_results_dir(str(tmp_path))
  out = json.loads((tmp_path / 'summary.json').read_text())
  for entry in (out['table2'][0], out['best'], out['best']['single_runs'][0]):
    lo, hi = entry['hr_ci95']
    assert lo < entry['hr'] < hi and 0.02 < hi - lo < 0.03
    assert entry['ndcg_ci95'] is None and 'not on this machine' in entry['ndcg_ci95_note']
    assert 'hr_ci95_wald' not in entry and 'ci_note' not in entry
  assert out['baselines'] == summary['baselines']  # computed from per-user ranks: untouched
  factors = json.loads((tmp_path / 'factors.json').read_text())
  assert factors['rows'][0]['hr_ci95'] == pytest.approx(
      stored_intervals.hr_interval_from_count(3020, 6040))


def test_per_user_ranks_give_both_intervals():
  ranks = np.random.default_rng(0).integers(0, 100, 6040)
  entry = stored_intervals.with_intervals(dict(hr=float(np.mean(ranks < 10))), ranks)
  ndcg = np.where(ranks < 10, 1 / np.log2(ranks + 2.0), 0).mean()
  assert entry['ndcg_ci95'][0] < ndcg < entry['ndcg_ci95'][1]
  assert entry['hr_ci95'] == pytest.approx(stored_intervals.hr_interval_from_count(
      int(np.sum(ranks < 10)), 6040), abs=0.0015)
