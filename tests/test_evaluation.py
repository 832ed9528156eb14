"""Ranking metrics against plain NumPy references, ties included."""

import jax
import jax.numpy as jnp
import numpy as np

from ncf_jax import evaluation
from ncf_jax import models
from ncf_jax.data.dataset import HeldOut


def _reference_rank(pos, negs):
  """Candidates scoring strictly higher, one Python loop (the slow, obvious way)."""
  return np.array([sum(1 for s in row if s > p) for p, row in zip(pos, negs)])


def test_ranks_and_metrics_match_numpy_with_ties():
  rng = np.random.default_rng(0)
  pos = rng.integers(0, 5, size=300).astype(np.float32)  # small ints: many exact ties
  negs = rng.integers(0, 5, size=(300, 20)).astype(np.float32)
  ranks = np.asarray(evaluation.ranks_from_scores(jnp.asarray(pos), jnp.asarray(negs)))
  np.testing.assert_array_equal(ranks, _reference_rank(pos, negs))
  for k in (1, 5, 10):
    hit, ndcg = evaluation.hit_and_ndcg(jnp.asarray(ranks), k)
    ref_hit = np.array([r < k for r in ranks], dtype=float)
    ref_ndcg = np.array([np.log(2) / np.log(r + 2) if r < k else 0 for r in ranks])
    np.testing.assert_allclose(hit, ref_hit)
    np.testing.assert_allclose(ndcg, ref_ndcg, rtol=1e-6)
    summary = evaluation.summarize(ranks, k)
    assert summary['hr'] == ref_hit.mean()
    np.testing.assert_allclose(summary['ndcg'], ref_ndcg.mean(), rtol=1e-6)


def _model_and_params(num_users, num_items, seed=0):
  model = models.NeuMF(num_users, num_items, num_factors=4, layers=(16, 8, 4))
  ids = jnp.zeros((2,), jnp.int32)
  params = model.init(jax.random.key(seed), ids, ids)['params']
  return model, jax.tree_util.tree_map(lambda x: x * 40, params)


def _all_scores(model, params, num_users, num_items):
  uu, ii = np.meshgrid(np.arange(num_users), np.arange(num_items), indexing='ij')
  return np.array(model.apply({'params': params}, uu.ravel(), ii.ravel())).reshape(
      num_users, num_items)


def test_sampled_evaluator_matches_numpy_and_ignores_duplicate_of_heldout():
  num_users, num_items = 37, 50
  model, params = _model_and_params(num_users, num_items)
  rng = np.random.default_rng(1)
  users = np.arange(num_users, dtype=np.int32)
  items = rng.integers(0, num_items, num_users).astype(np.int32)
  negatives = rng.integers(0, num_items, (num_users, 9)).astype(np.int32)
  negatives[::3, 4] = items[::3]  # the held-out item listed among its own negatives
  scores = _all_scores(model, params, num_users, num_items)
  expected = _reference_rank(scores[users, items], scores[users[:, None], negatives])
  evaluator = evaluation.SampledEvaluator(model, HeldOut(users, items, negatives),
                                          users_per_block=8)  # 37 users: a padded last block
  np.testing.assert_array_equal(np.asarray(evaluator.ranks(params)), expected)
  assert evaluator(params, 3)['hr'] == np.mean(expected < 3)


def test_full_ranking_matches_numpy_with_masked_known_items():
  num_users, num_items = 23, 31
  model, params = _model_and_params(num_users, num_items, seed=2)
  rng = np.random.default_rng(3)
  known = rng.random((num_users, num_items)) < 0.3
  items = np.array([rng.choice(np.flatnonzero(~row)) for row in known], dtype=np.int32)
  users = np.arange(num_users, dtype=np.int32)
  ku, ki = np.nonzero(known)
  evaluator = evaluation.FullRankingEvaluator(
      model, HeldOut(users, items, np.zeros((num_users, 1), np.int32)), ku, ki, num_items,
      max_block_elements=5 * num_items * 64)  # several blocks
  scores = _all_scores(model, params, num_users, num_items)
  expected = []
  for u in range(num_users):
    candidates = [scores[u, j] for j in range(num_items) if not known[u, j] and j != items[u]]
    expected.append(sum(1 for s in candidates if s > scores[u, items[u]]))
  np.testing.assert_array_equal(np.asarray(evaluator.ranks(params)), expected)
