"""Ranking metrics against plain NumPy references: ties count against the held-out item,
copies of it are excluded, a constant model ranks last, non-finite scores are errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncf_jax import evaluation
from ncf_jax import models
from ncf_jax.data.dataset import Dataset, HeldOut
from ncf_jax.errors import ConfigError, NonFiniteError


def _reference_rank(pos, negs, heldout_items=None, negative_items=None):
  """Candidates scoring >= the held-out item, copies of it excluded (a plain Python loop)."""
  ranks = []
  for r, (p, row) in enumerate(zip(pos, negs)):
    ranks.append(sum(1 for c, s in enumerate(row) if s >= p and (
        heldout_items is None or negative_items[r][c] != heldout_items[r])))
  return np.array(ranks)


def test_ranks_and_metrics_match_numpy_with_ties():
  rng = np.random.default_rng(0)
  pos = rng.integers(0, 5, size=300).astype(np.float32)  # small ints: many exact ties
  negs = rng.integers(0, 5, size=(300, 20)).astype(np.float32)
  counted = np.ones(negs.shape, bool)
  ranks = np.asarray(evaluation.ranks_from_scores(jnp.asarray(pos), jnp.asarray(negs), counted))
  np.testing.assert_array_equal(ranks, _reference_rank(pos, negs))
  for k in (1, 5, 10):
    ref_hit = np.array([r < k for r in ranks], dtype=float)
    ref_ndcg = np.array([np.log(2) / np.log(r + 2) if r < k else 0 for r in ranks])
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


def _heldout_with_copies(num_users, num_items, num_negatives=9, seed=1):
  rng = np.random.default_rng(seed)
  users = np.arange(num_users, dtype=np.int32)
  items = rng.integers(0, num_items, num_users).astype(np.int32)
  negatives = rng.integers(0, num_items, (num_users, num_negatives)).astype(np.int32)
  negatives[::3, 4] = items[::3]  # the held-out item listed among its own negatives
  return HeldOut(users, items, negatives)


def test_sampled_evaluator_matches_numpy_and_excludes_copies_of_heldout():
  num_users, num_items = 37, 50
  model, params = _model_and_params(num_users, num_items)
  heldout = _heldout_with_copies(num_users, num_items)
  users, items, negatives = heldout.users, heldout.items, heldout.negatives
  scores = _all_scores(model, params, num_users, num_items)
  expected = _reference_rank(scores[users, items], scores[users[:, None], negatives],
                             items, negatives)
  evaluator = evaluation.SampledEvaluator(model, heldout,
                                          users_per_block=8)  # 37 users: a padded last block
  ranks, nonfinite = evaluator.ranks(params)
  np.testing.assert_array_equal(np.asarray(ranks)[:num_users], expected)
  assert int(nonfinite) == 0
  assert evaluator(params, 3)['hr'] == np.mean(expected < 3)


def _constant(params, value):
  """Params under which every user-item pair scores the same (the head outputs its bias)."""
  params = jax.tree_util.tree_map(jnp.zeros_like, params)
  params['head']['bias'] = jnp.full_like(params['head']['bias'], value)
  return params


def test_a_constant_model_ranks_last_and_a_nan_model_is_an_error():
  num_users, num_items = 37, 50
  model, params = _model_and_params(num_users, num_items)
  heldout = _heldout_with_copies(num_users, num_items)
  sampled = evaluation.SampledEvaluator(model, heldout, users_per_block=8)
  known = np.zeros((num_users, num_items), bool)
  known[:, :5] = True
  known[heldout.users, heldout.items] = False
  ku, ki = np.nonzero(known)
  full = evaluation.FullRankingEvaluator(model, heldout, ku, ki, num_items)
  for evaluator in (sampled, full):
    constant = evaluator(_constant(params, 0.3), 5)
    assert constant['hr'] == 0.0 and constant['ndcg'] == 0.0
    for bad in (np.nan, np.inf):
      with pytest.raises(NonFiniteError, match='NaN or infinite'):
        evaluator(_constant(params, bad), 5)
    broken = jax.tree_util.tree_map(lambda x: x, params)
    broken['gmf']['user_embedding'] = broken['gmf']['user_embedding'].at[3].set(np.nan)
    with pytest.raises(NonFiniteError):  # one user's NaN row is enough
      evaluator(broken, 5)


def test_top_k_must_be_below_the_number_of_candidates():
  num_users, num_items = 37, 50
  model, params = _model_and_params(num_users, num_items)
  heldout = _heldout_with_copies(num_users, num_items)
  fewest = 1 + int((heldout.negatives != heldout.items[:, None]).sum(axis=1).min())
  assert fewest < 1 + heldout.negatives.shape[1]  # copies of the held-out item do not count
  evaluator = evaluation.SampledEvaluator(model, heldout)
  assert evaluator.num_candidates == fewest
  evaluator(params, fewest - 1)
  with pytest.raises(ConfigError, match=f'config.top_k={fewest}'):
    evaluator(params, fewest)
  full = evaluation.FullRankingEvaluator(model, heldout, heldout.users[:1],
                                         (heldout.items[:1] + 1) % num_items, num_items)
  assert full.num_candidates == num_items - 1
  with pytest.raises(ConfigError, match='full-ranking'):
    full(params, num_items - 1)


def test_item_popularity_counts_ties_against_the_heldout_item():
  # Items 0 and 1 are equally popular; the held-out item 0 ties with negative 1.
  train_users = np.array([0, 0, 1, 1, 2], np.int32)
  train_items = np.array([0, 1, 0, 1, 2], np.int32)
  test = HeldOut(np.array([2], np.int32), np.array([0], np.int32),
                 np.array([[1, 3, 0]], np.int32))  # a copy of the held-out item: excluded
  dataset = Dataset('tiny', 3, 4, train_users, train_items, np.zeros(5, np.int64), test)
  assert evaluation.item_popularity(dataset, 1)['hr'] == 0.0
  assert evaluation.item_popularity(dataset, 2)['hr'] == 1.0  # rank 1: only item 1 ties


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
    expected.append(sum(1 for s in candidates if s >= scores[u, items[u]]))
  ranks, nonfinite = evaluator.ranks(params)
  np.testing.assert_array_equal(np.asarray(ranks)[:num_users], expected)
  assert int(nonfinite) == 0
