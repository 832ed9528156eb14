"""Optimizers and the train step: lazy against dense, the per-example recipe of Rendle et al.,
schedules, the chunked loop against single steps, the embedding-stddev config."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config as _config
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import run_settings
from ncf_jax import train_step as train_step_lib


def _params(model, seed=0):
  ids = jnp.zeros((2,), jnp.int32)
  return model.init(jax.random.key(seed), ids, ids)['params']


def _stepper(model, config, total_steps=1):
  """(jitted train step, fresh state) for `config`'s optimizer."""
  optimizer = optimizers.create_optimizer(run_settings.optimizer_settings(config), total_steps)
  step = jax.jit(train_step_lib.make_train_step(
      model, optimizer, run_settings.regularization(config)))
  return step, optimizer


def _train(model, config, params, batches, total_steps=1):
  step, optimizer = _stepper(model, config, total_steps)
  state = train_step_lib.init_state(params, optimizer, model)
  for batch in batches:
    state, _ = step(state, batch)
  return state


def _mf_batch():
  return dict(users=jnp.array([1, 1, 4, 7, 0], jnp.int32),
              items=jnp.array([2, 9, 9, 0, 3], jnp.int32),
              labels=jnp.array([1., 0., 1., 0., 0.]), weights=jnp.array([1., 1., 1., 1., 0.]))


def test_only_the_lazy_optimizers_are_row_sparse_and_only_dense_adam_moves_absent_rows():
  # The README's list: `lazy_adam` and `lazy_sgd` update only the rows a batch looks up. Two
  # steps on disjoint users: the rows of the first batch only move in the second step under
  # dense Adam (its moments decay into an update); SGD, Adagrad and RMSProp give an absent row
  # a zero update, and the lazy ones never touch it.
  first = dict(users=jnp.array([1, 2], jnp.int32), items=jnp.array([3, 4], jnp.int32),
               labels=jnp.array([1., 0.]), weights=jnp.ones(2))
  second = dict(first, users=jnp.array([5, 6], jnp.int32))
  row_sparse, moved = set(), set()
  for name in optimizers.OPTIMIZERS:
    config = _config(model='mf', optimizer=name, learning_rate=0.05,
                     l2_embeddings_per_example=True)
    model = models.create_model(run_settings.model_settings(config), 20, 15)
    step, optimizer = _stepper(model, config)
    state = train_step_lib.init_state(_params(model), optimizer, model)
    state, _ = step(state, first)
    after_first = np.asarray(state['params']['mf']['user_embedding'])
    state, _ = step(state, second)
    after_second = np.asarray(state['params']['mf']['user_embedding'])
    if optimizer.row_sparse:
      row_sparse.add(name)
    if not np.array_equal(after_first[[1, 2]], after_second[[1, 2]]):
      moved.add(name)
    assert not np.array_equal(after_first[[5, 6]], after_second[[5, 6]]), name
  assert row_sparse == {'lazy_adam', 'lazy_sgd'}
  assert moved == {'adam'}


def test_lazy_sgd_equals_dense_sgd_with_per_example_l2():
  # Plain SGD's update of a row is its summed gradient whichever way it is
  # applied, so the two paths agree step after step, padding (weight 0) included.
  config = _config(model='mf', optimizer='lazy_sgd', learning_rate=0.5, l2_embeddings=0.01,
                   l2_embeddings_per_example=True, embedding_stddev=0.1)
  model = models.create_model(run_settings.model_settings(config), 20, 15)
  params = _params(model)
  lazy = _train(model, config, params, [_mf_batch()] * 3)
  config.optimizer = 'sgd'
  dense = _train(model, config, params, [_mf_batch()] * 3)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         lazy['params'], dense['params'])
  assert not np.allclose(lazy['params']['mf']['user_embedding'],
                         params['mf']['user_embedding'])


def test_per_example_l2_is_rendle_per_example_sgd():
  # One example, one step: p_u += lr·((y − σ(ŷ))·q_i − reg·p_u) with reg = 2·l2,
  # the update of Rendle et al.'s mf_simple.py; the other users' rows stay put.
  lr, l2 = 0.1, 0.05
  config = _config(model='mf', optimizer='lazy_sgd', learning_rate=lr, l2_embeddings=l2,
                   l2_embeddings_per_example=True, embedding_stddev=0.5)
  model = models.create_model(run_settings.model_settings(config), 6, 5)
  params = _params(model, seed=3)
  batch = dict(users=jnp.array([2], jnp.int32), items=jnp.array([4], jnp.int32),
               labels=jnp.array([1.]), weights=jnp.array([1.]))
  state = _train(model, config, params, [batch])
  p = {k: np.asarray(v, np.float64) for k, v in params['mf'].items()}
  pu, qi, bu, bi = (p['user_embedding'][2], p['item_embedding'][4], p['user_bias'][2, 0],
                    p['item_bias'][4, 0])
  grad = 1.0 - 1.0 / (1.0 + np.exp(-(pu @ qi + bu + bi + float(params['bias']))))
  new = {k: np.asarray(v) for k, v in state['params']['mf'].items()}
  np.testing.assert_allclose(new['user_embedding'][2], pu + lr * (grad * qi - 2 * l2 * pu),
                             rtol=1e-5)
  np.testing.assert_allclose(new['item_embedding'][4], qi + lr * (grad * pu - 2 * l2 * qi),
                             rtol=1e-5)
  np.testing.assert_allclose(new['user_bias'][2, 0], bu + lr * (grad - 2 * l2 * bu),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(new['user_embedding'][[0, 1, 3, 4, 5]],
                                p['user_embedding'][[0, 1, 3, 4, 5]].astype(np.float32))


@pytest.mark.parametrize('model_name', ['gmf', 'mlp', 'neumf', 'mf'])
def test_embedding_stddev_sets_the_initial_spread(model_name):
  config = _config(model=model_name, embedding_stddev=0.1, num_factors=16)
  model = models.create_model(run_settings.model_settings(config), 500, 400)
  flat = flax.traverse_util.flatten_dict(_params(model))
  tables = [v for k, v in flat.items() if k[-1].endswith('_embedding')]
  assert tables
  for table in tables:
    assert abs(float(np.std(table)) - 0.1) < 0.01


def test_lazy_adam_matches_dense_adam_on_the_first_step():
  # From zero moments, Adam's first update of a touched row does not depend on
  # other rows, and untouched rows get a zero update: lazy and dense agree.
  config = _config(optimizer='lazy_adam', learning_rate=0.01)
  model = models.GMF(20, 15, num_factors=4)
  params = _params(model)
  batch = dict(users=jnp.array([1, 1, 4, 7], jnp.int32), items=jnp.array([2, 9, 9, 0], jnp.int32),
               labels=jnp.array([1., 0., 1., 0.]), weights=jnp.ones(4))
  lazy_state = _train(model, config, params, [batch])
  config.optimizer = 'adam'
  dense_state = _train(model, config, params, [batch])
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                         lazy_state['params'], dense_state['params'])
  untouched = np.setdiff1d(np.arange(20), [1, 4, 7])
  np.testing.assert_array_equal(lazy_state['params']['gmf']['user_embedding'][untouched],
                                params['gmf']['user_embedding'][untouched])


def test_lazy_adam_leaves_absent_rows_alone_later():
  config = _config(optimizer='lazy_adam', learning_rate=0.01)
  model = models.GMF(20, 15, num_factors=4)
  step, optimizer = _stepper(model, config)
  state = train_step_lib.init_state(_params(model), optimizer, model)
  first = dict(users=jnp.array([1, 2], jnp.int32), items=jnp.array([3, 4], jnp.int32),
               labels=jnp.array([1., 0.]), weights=jnp.ones(2))
  second = dict(first, users=jnp.array([5, 6], jnp.int32))
  state, _ = step(state, first)
  after_first = np.asarray(state['params']['gmf']['user_embedding'])
  state, _ = step(state, second)
  after_second = np.asarray(state['params']['gmf']['user_embedding'])
  np.testing.assert_array_equal(after_first[[1, 2]], after_second[[1, 2]])  # dense Adam would move
  assert not np.allclose(after_first[[5, 6]], after_second[[5, 6]])
  assert int(state['opt_state']['count']) == 2  # the optimizer owns its step count


def test_unique_rows_pads_with_distinct_sorted_out_of_range_ids():
  ids = jnp.array([5, 2, 5, 9, 2, 2], jnp.int32)
  uniq, inverse = optimizers.unique_rows(ids, num_rows=10)
  uniq, inverse = np.asarray(uniq), np.asarray(inverse)
  np.testing.assert_array_equal(uniq[:3], [2, 5, 9])
  padding = uniq[3:]
  assert (padding >= 10).all() and len(set(padding)) == len(padding)
  assert (np.diff(uniq) > 0).all()  # sorted and distinct, padding included
  np.testing.assert_array_equal(uniq[inverse], np.asarray(ids))


@pytest.mark.parametrize('optimizer', ['adam', 'lazy_adam', 'lazy_sgd'])
def test_train_chunk_equals_single_steps(optimizer):
  config = _config(model='neumf', optimizer=optimizer, learning_rate=0.05)
  model = models.create_model(run_settings.model_settings(config), 30, 25)
  params = _params(model, seed=4)
  rng = np.random.default_rng(0)
  batches = dict(users=rng.integers(0, 30, (5, 16)).astype(np.int32),
                 items=rng.integers(0, 25, (5, 16)).astype(np.int32),
                 labels=rng.integers(0, 2, (5, 16)).astype(np.float32),
                 weights=np.ones((5, 16), np.float32))
  singles = _train(model, config, params,
                   [{k: v[i] for k, v in batches.items()} for i in range(4)])
  optimizer_ = optimizers.create_optimizer(run_settings.optimizer_settings(config))
  chunk = train_step_lib.make_train_chunk(model, optimizer_)
  state = train_step_lib.init_state(jax.tree_util.tree_map(jnp.copy, params), optimizer_, model)
  state, metrics = chunk(state, batches, np.int32(4))  # the 5th batch must not run
  assert int(state['step']) == 4 and float(metrics['weight_sum']) == 64.0
  assert int(metrics['nonfinite']) == 0
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                         state['params'], singles['params'])


@pytest.mark.parametrize('optimizer', ['sgd', 'lazy_sgd', 'adam', 'lazy_adam'])
def test_cosine_schedule_starts_at_the_rate_and_ends_at_zero(optimizer):
  # Step 1 moves the parameters as a constant rate would; after `total_steps`
  # steps the rate is 0, so one more step changes nothing.
  total = 3
  config = _config(model='mf', optimizer=optimizer, learning_rate=0.1,
                   l2_embeddings_per_example=True)
  model = models.create_model(run_settings.model_settings(config), 20, 15)
  params = _params(model)

  def states(schedule, num_steps):
    """The parameters after each of `num_steps` steps (one compiled step per schedule)."""
    config.learning_rate_schedule = schedule
    step, optimizer = _stepper(model, config, total)
    state, out = train_step_lib.init_state(params, optimizer, model), []
    for _ in range(num_steps):
      state, _ = step(state, _mf_batch())
      out.append(jax.tree_util.tree_map(np.asarray, state['params']))
    return out

  cosine, constant = states('cosine', total + 1), states('constant', 1)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                         cosine[0], constant[0])
  jax.tree_util.tree_map(np.testing.assert_array_equal, cosine[total], cosine[total - 1])
  moved = cosine[total - 1]['mf']['user_embedding'] - params['mf']['user_embedding']
  assert np.abs(moved).max() > 0
