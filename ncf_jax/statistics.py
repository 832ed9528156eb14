"""Uncertainty of leave-one-out metrics, and the corrected sampled HR of Krichene & Rendle.

Every HR/NDCG here is a mean over users of a per-user value (a hit, a discounted
hit), so its uncertainty is that of a mean over users:

- `bootstrap_ci`: the percentile 95% interval of the mean over `num_resamples`
  resamples of the users (with replacement), seeded; all metrics share the resamples.
- `paired_bootstrap`: "A beats B" on the same users: the resampled mean of the
  per-user differences; the p-value is the share of resamples in which A does not beat B
  (one-sided), with the +1 correction so that it is never 0.
- `corrected_hr`: Krichene & Rendle (KDD 2020, "On Sampled Metrics for Item
  Recommendation"), section 5.2, the bias-variance ("BV") corrected estimator. A user's
  sampled rank r (how many of m sampled negatives score at least its held-out item) is
  mapped to a value w[r] chosen so that, averaged over a prior on the true rank R among
  n other items, E[w[r] | R] is close to HR@K(R) = [R < K] (bias) without w varying
  wildly (variance):
      min_w  sum_R p(R) [ (E[w[r]|R] - [R<K])^2 + gamma * Var(w[r]|R) ],
  with r | R ~ Binomial(m, R / n) (negatives drawn with replacement), p uniform over
  R = 0..n-1 and gamma = 0.1 (their recommended small trade-off). The solution is a
  linear system of size m + 1 (`bv_weights`). The corrected HR@K is the mean of w[r]
  over users. A model that scores every candidate alike has r = m for every user, and
  w[m] is about 0: a broken model is not rewarded.
"""

import functools
import math

import numpy as np

NUM_RESAMPLES = 1000
CI_LEVEL = 0.95
BV_GAMMA = 0.1


def bootstrap_means(values: np.ndarray, num_resamples: int = NUM_RESAMPLES,
                    seed: int = 0, chunk: int = 500) -> np.ndarray:
  """(num_resamples, ...) means over resampled users of `values` ((users,) or (users, k)).

  Resample b draws `len(values)` user indices with replacement: the next
  `len(values)` integers of `np.random.default_rng(seed)`, resample after resample.
  """
  values = np.asarray(values, np.float64)
  num_users = len(values)
  rng = np.random.default_rng(seed)
  out = []
  for start in range(0, num_resamples, chunk):
    rows = min(chunk, num_resamples - start)
    index = rng.integers(0, num_users, (rows, num_users))
    # Counts per user per resample: each mean is then a matrix product.
    flat = (np.arange(rows)[:, None] * num_users + index).ravel()
    counts = np.bincount(flat, minlength=rows * num_users).reshape(rows, num_users)
    out.append(counts @ values / num_users)
  return np.concatenate(out)


def bootstrap_ci(values: np.ndarray, num_resamples: int = NUM_RESAMPLES, seed: int = 0,
                 level: float = CI_LEVEL) -> tuple[float, float]:
  """The percentile bootstrap interval of the mean of per-user `values` (users,)."""
  means = bootstrap_means(values, num_resamples, seed)
  tail = (1.0 - level) / 2
  lo, hi = np.quantile(means, [tail, 1.0 - tail])
  return float(lo), float(hi)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, num_resamples: int = 10_000,
                     seed: int = 0) -> dict:
  """Whether A's per-user values beat B's on the same users.

  Returns the observed mean difference (A - B), its 95% percentile interval, and the
  one-sided p-value (1 + #{resampled difference <= 0}) / (1 + num_resamples).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f'paired values differ in shape: {a.shape} vs {b.shape}')
  diff = a - b
  means = bootstrap_means(diff, num_resamples, seed)
  lo, hi = np.quantile(means, [0.025, 0.975])
  p = (1 + int(np.sum(means <= 0))) / (1 + num_resamples)
  return dict(difference=float(diff.mean()), ci95=(float(lo), float(hi)), p_value=p,
              num_resamples=num_resamples, seed=seed)


def binomial_pmf(trials: int, p: np.ndarray) -> np.ndarray:
  """(len(p), trials + 1): P[k successes in `trials`] for each success probability in
  `p` (each in [0, 1)). NumPy's, not scipy.stats' (whose import alone takes 0.7 s, and
  every evaluation computes the corrected HR)."""
  k = np.arange(trials + 1)
  log_choose = np.array([math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1)
                         for i in k])
  p = np.asarray(p, np.float64)[:, None]
  with np.errstate(divide='ignore', invalid='ignore'):
    log_p = np.where(k == 0, 0.0, k * np.log(p))  # 0 successes at p = 0: probability 1
  return np.exp(log_choose + log_p + (trials - k) * np.log1p(-p))


@functools.lru_cache(maxsize=16)
def bv_weights(num_negatives: int, num_others: int, top_k: int,
               gamma: float = BV_GAMMA) -> np.ndarray:
  """(num_negatives + 1,) Krichene & Rendle's BV-corrected HR@top_k for each sampled rank.

  `num_others`: the items the held-out item competes with in full ranking (n).
  """
  m, n = num_negatives, num_others
  true_ranks = np.arange(n)
  # P[R, r]: probability of sampled rank r given true rank R.
  p_sampled = binomial_pmf(m, true_ranks / n)
  prior = np.full(n, 1.0 / n)
  metric = (true_ranks < top_k).astype(np.float64)
  weighted = p_sampled * prior[:, None]
  lhs = (1.0 - gamma) * p_sampled.T @ weighted + gamma * np.diag(weighted.sum(axis=0))
  rhs = weighted.T @ metric
  return np.linalg.solve(lhs, rhs)


def corrected_hr(sampled_ranks: np.ndarray, num_negatives: int, num_others: int,
                 top_k: int) -> float:
  """Krichene & Rendle's BV-corrected HR@top_k from each user's sampled rank (0..m)."""
  ranks = np.clip(np.asarray(sampled_ranks), 0, num_negatives)
  return float(bv_weights(num_negatives, num_others, top_k)[ranks].mean())


def per_user_metrics(ranks: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
  """Each user's hit and NDCG at `top_k` from its rank (the rule of `evaluation`)."""
  ranks = np.asarray(ranks)
  hit = ranks < top_k
  return dict(hit=hit.astype(np.float64),
              ndcg=np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0))


def interval_fields(ranks: np.ndarray, top_k: int, seed: int = 0) -> dict:
  """`hr_ci95` and `ndcg_ci95` of per-user ranks: one shared set of resamples."""
  per_user = per_user_metrics(ranks, top_k)
  values = np.stack([per_user['hit'], per_user['ndcg']], axis=1)
  means = bootstrap_means(values, NUM_RESAMPLES, seed)
  tail = (1.0 - CI_LEVEL) / 2
  lo, hi = np.quantile(means, [tail, 1.0 - tail], axis=0)
  return dict(hr_ci95=(float(lo[0]), float(hi[0])), ndcg_ci95=(float(lo[1]), float(hi[1])))
