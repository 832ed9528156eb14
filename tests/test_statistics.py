"""Bootstrap intervals, the paired bootstrap and the corrected sampled HR, against plain
loops, an optimiser on the stated objective, and Monte-Carlo draws."""

import jax.numpy as jnp
import numpy as np
import pytest

from ncf_jax import evaluation
from ncf_jax import statistics
from ncf_jax.data.dataset import HeldOut


def _loop_means(values, num_resamples, seed):
  """The bootstrap written as a plain loop: resample b takes the next len(values) draws."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_resamples):
    index = rng.integers(0, len(values), len(values))
    out.append(sum(values[j] for j in index) / len(values))
  return np.array(out)


def test_bootstrap_means_equal_a_plain_loop_with_the_same_seed():
  values = np.random.default_rng(3).random(37)
  got = statistics.bootstrap_means(values, num_resamples=120, seed=5, chunk=50)
  np.testing.assert_allclose(got, _loop_means(values, 120, 5), rtol=1e-12)


def test_bootstrap_ci_is_the_loops_percentiles_and_is_seeded():
  values = (np.random.default_rng(0).random(200) < 0.7).astype(float)
  lo, hi = statistics.bootstrap_ci(values, num_resamples=300, seed=1)
  ref = np.quantile(_loop_means(values, 300, 1), [0.025, 0.975])
  assert (lo, hi) == pytest.approx(tuple(ref), abs=1e-12)
  assert statistics.bootstrap_ci(values, num_resamples=300, seed=1) == (lo, hi)
  assert statistics.bootstrap_ci(values, num_resamples=300, seed=2) != (lo, hi)


def test_interval_width_matches_the_binomial_standard_error():
  hits = (np.random.default_rng(0).random(6040) < 0.73).astype(float)
  ranks = np.where(hits > 0, 0, 50)
  fields = statistics.interval_fields(ranks, top_k=10)
  se = np.sqrt(0.73 * 0.27 / 6040)  # about 0.0057
  width = fields['hr_ci95'][1] - fields['hr_ci95'][0]
  assert width == pytest.approx(2 * 1.96 * se, rel=0.15)
  assert fields['hr_ci95'][0] < hits.mean() < fields['hr_ci95'][1]


def test_paired_bootstrap_against_a_loop_and_its_verdicts():
  rng = np.random.default_rng(0)
  a = (rng.random(300) < 0.7).astype(float)
  b = a.copy()
  b[:30] = 0.0  # B loses 30 of A's hits (some were misses already)
  out = statistics.paired_bootstrap(a, b, num_resamples=400, seed=9)
  diffs = _loop_means(a - b, 400, 9)
  assert out['p_value'] == pytest.approx((1 + np.sum(diffs <= 0)) / 401)
  assert out['difference'] == pytest.approx(np.mean(a - b))
  assert out['p_value'] < 0.01
  same = statistics.paired_bootstrap(a, a, num_resamples=400, seed=9)
  assert same['p_value'] == 1.0  # no difference is no evidence
  reverse = statistics.paired_bootstrap(b, a, num_resamples=400, seed=9)
  assert reverse['p_value'] == 1.0


def _bv_objective(w, m, n, k, gamma):
  """Krichene & Rendle's BV loss, written out term by term with a uniform prior."""
  from scipy import stats  # pylint: disable=g-import-not-at-top  (0.7 s: when used)
  total = 0.0
  for true_rank in range(n):
    p = stats.binom.pmf(np.arange(m + 1), m, true_rank / n)
    mean = p @ w
    var = p @ (w - mean) ** 2
    total += ((mean - float(true_rank < k)) ** 2 + gamma * var) / n
  return total


def test_binomial_pmf_is_scipys():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  p = np.arange(3706) / 3706  # the sampled-rank probabilities of ML-1M's corrected HR
  np.testing.assert_allclose(statistics.binomial_pmf(99, p),
                             stats.binom.pmf(np.arange(100)[None, :], 99, p[:, None]),
                             rtol=1e-10, atol=1e-300)
  np.testing.assert_array_equal(statistics.binomial_pmf(4, np.array([0.0]))[0], [1, 0, 0, 0, 0])


def test_bv_weights_minimise_the_stated_objective():
  m, n, k, gamma = 6, 40, 3, 0.1
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  w = statistics.bv_weights(m, n, k, gamma)
  reference = optimize.minimize(_bv_objective, np.zeros(m + 1), args=(m, n, k, gamma),
                                method='BFGS', options=dict(gtol=1e-10)).x
  np.testing.assert_allclose(w, reference, atol=1e-4)


def test_corrected_hr_recovers_full_hr_in_monte_carlo():
  # True ranks from a spread-out distribution; sampled ranks drawn as the sampler does
  # (m uniform negatives among n others, with replacement).
  rng = np.random.default_rng(0)
  n, m, k = 2000, 99, 10
  true_ranks = np.minimum(rng.geometric(1 / 60, size=20000) - 1, n - 1)
  sampled = rng.binomial(m, true_ranks / n)
  full_hr = np.mean(true_ranks < k)
  naive = np.mean(sampled < k)
  corrected = statistics.corrected_hr(sampled, m, n, k)
  assert naive > 3 * full_hr  # sampled HR@10 is far above the full-ranking one
  assert abs(corrected - full_hr) < 0.3 * abs(naive - full_hr)


def test_broken_models_do_not_score_under_the_corrected_metric():
  n, m, k = 3705, 99, 10
  constant = np.full(1000, m)  # every candidate scores alike: rank m (ties count against)
  assert statistics.corrected_hr(constant, m, n, k) < 0.005
  random = np.random.default_rng(0).integers(0, m + 1, 100_000)
  assert abs(statistics.corrected_hr(random, m, n, k) - k / n) < 0.01
  perfect = np.zeros(1000, int)
  assert statistics.corrected_hr(perfect, m, n, k) > 0.1


def _heldout(num_users, num_negatives, num_items, seed=0):
  rng = np.random.default_rng(seed)
  items = rng.integers(0, num_items, num_users)
  negatives = (items[:, None] + 1 + rng.choice(num_items - 1, (num_users, num_negatives))) % num_items
  return HeldOut(np.arange(num_users), items, negatives)


class _Constant:
  """A model whose parameters are one score for every pair (or NaN)."""
  pair_width = 1

  def apply(self, variables, users, items, method=None):
    return jnp.full(users.shape, variables['params']['value'])


def test_sampled_evaluator_reports_intervals_and_the_corrected_hr():
  heldout = _heldout(50, 20, 300)
  evaluator = evaluation.SampledEvaluator(_Constant(), heldout, 16, num_items=300)
  out = evaluator({'value': jnp.float32(0.5)}, top_k=5)
  assert out['hr'] == 0.0 and out['hr_ci95'] == (0.0, 0.0)
  assert out['corrected_hr'] < 0.01
  with pytest.raises(Exception, match='NaN'):
    evaluator({'value': jnp.float32(np.nan)}, top_k=5)
