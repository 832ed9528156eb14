"""Training: the loss falls, the model beats popularity, one compilation, metrics.jsonl."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncf_jax.configs import test as test_config
from ncf_jax import evaluation
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import train
from ncf_jax import train_step as train_step_lib
from ncf_jax.data import registry
from ncf_jax.errors import ConfigError


def _config(**overrides):
  config = test_config.get_config()
  for key, value in overrides.items():
    config[key] = value
  return config


def _popularity_hr(dataset, k=10):
  return evaluation.item_popularity(dataset, k)['hr']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """NeuMF on a mid-sized synthetic set, long enough to learn the planted clusters."""
  config = _config(num_epochs=6, batch_size=256, learning_rate=0.005)
  config.synthetic.update(dict(num_users=400, num_items=200, interactions_per_user=30,
                               num_test_negatives=99))
  workdir = tmp_path_factory.mktemp('trained')
  state, history = train.train_and_evaluate(config, str(workdir))
  return config, workdir, state, history


def test_loss_falls_and_model_beats_popularity(trained):
  config, _, _, history = trained
  losses = [r['loss'] for r in history[1:]]
  assert losses[-1] < 0.8 * losses[0]
  dataset = registry.load_dataset(config)
  best_hr = max(r['hr'] for r in history)
  assert best_hr > _popularity_hr(dataset) + 0.1


def test_metrics_jsonl_has_one_record_per_evaluation(trained):
  config, workdir, _, history = trained
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r['epoch'] for r in records] == list(range(config.num_epochs + 1))
  assert records == history
  assert records[0]['loss'] is None and records[0]['train_seconds'] is None
  for r in records[1:]:
    assert 0 < r['loss'] < 1 and 0 <= r['hr'] <= 1 and 0 <= r['ndcg'] <= r['hr']
    assert r['train_seconds'] > 0 and r['eval_seconds'] >= 0 and r['samples_per_second'] > 0
    assert r['test']['hr@1'] <= r['test']['hr@5'] <= r['test']['hr@10'] <= r['test']['hr@20']
  assert json.loads((workdir / 'config.json').read_text())['model'] == 'neumf'
  assert (workdir / 'checkpoints' / 'best').is_dir()


def test_train_chunk_compiles_once_across_epochs(tmp_path, monkeypatch):
  traces = []
  make_step = train_step_lib.make_train_step

  def counting_make_train_step(*args):
    step = make_step(*args)

    def counted(state, batch):
      traces.append(1)  # runs once per trace, never per executed step
      return step(state, batch)

    return counted

  monkeypatch.setattr(train_step_lib, 'make_train_step', counting_make_train_step)
  # 3 epochs, each ending in a short chunk (a different trip count), one trace.
  config = _config(num_epochs=3, steps_per_dispatch=5)
  train.train_and_evaluate(config, str(tmp_path))
  assert len(traces) == 1


@pytest.mark.parametrize('optimizer', ['adam', 'lazy_adam', 'sgd', 'lazy_sgd', 'adagrad', 'rmsprop'])
def test_every_optimizer_reduces_the_loss(tmp_path, optimizer):
  lr = {'sgd': 0.5, 'lazy_sgd': 0.5, 'adagrad': 0.05}.get(optimizer, 0.005)
  config = _config(num_epochs=3, optimizer=optimizer, learning_rate=lr, model='gmf')
  _, history = train.train_and_evaluate(config, str(tmp_path))
  assert history[-1]['loss'] < history[1]['loss']


def test_mf_baseline_trains_with_lazy_adam(tmp_path):
  config = _config(num_epochs=3, model='mf', optimizer='lazy_adam', learning_rate=0.01,
                   l2_embeddings=1e-4, l2_embeddings_per_example=True)
  _, history = train.train_and_evaluate(config, str(tmp_path))
  assert history[-1]['loss'] < history[1]['loss']
  assert history[-1]['hr'] > history[0]['hr']


def test_lazy_optimizer_with_whole_table_l2_is_refused(tmp_path):
  config = _config(optimizer='lazy_sgd', l2_embeddings=1e-4)
  with pytest.raises(ConfigError, match='l2_embeddings_per_example'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def _mf_batch():
  return dict(users=jnp.array([1, 1, 4, 7, 0], jnp.int32),
              items=jnp.array([2, 9, 9, 0, 3], jnp.int32),
              labels=jnp.array([1., 0., 1., 0., 0.]), weights=jnp.array([1., 1., 1., 1., 0.]))


def test_lazy_sgd_equals_dense_sgd_with_per_example_l2():
  # Plain SGD's update of a row is its summed gradient whichever way it is
  # applied, so the two paths agree step after step, padding (weight 0) included.
  config = _config(model='mf', optimizer='lazy_sgd', learning_rate=0.5, l2_embeddings=0.01,
                   l2_embeddings_per_example=True, embedding_stddev=0.1)
  model = models.create_model(config, 20, 15)
  ids = jnp.zeros((2,), jnp.int32)
  params = model.init(jax.random.key(0), ids, ids)['params']
  tx = optimizers.create_optimizer(config)
  lazy_step = jax.jit(train_step_lib.make_train_step(model, tx, config))
  config.optimizer = 'sgd'
  dense_step = jax.jit(train_step_lib.make_train_step(model, tx, config))
  lazy, dense = (train_step_lib.init_state(params, tx, 'lazy_sgd'),
                 train_step_lib.init_state(params, tx, 'sgd'))
  for _ in range(3):
    lazy, _ = lazy_step(lazy, _mf_batch())
    dense, _ = dense_step(dense, _mf_batch())
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
  model = models.create_model(config, 6, 5)
  ids = jnp.zeros((1,), jnp.int32)
  params = model.init(jax.random.key(3), ids, ids)['params']
  tx = optimizers.create_optimizer(config)
  batch = dict(users=jnp.array([2], jnp.int32), items=jnp.array([4], jnp.int32),
               labels=jnp.array([1.]), weights=jnp.array([1.]))
  state, _ = train_step_lib.make_train_step(model, tx, config)(
      train_step_lib.init_state(params, tx, 'lazy_sgd'), batch)
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
  model = models.create_model(config, 500, 400)
  ids = jnp.zeros((1,), jnp.int32)
  flat = flax.traverse_util.flatten_dict(model.init(jax.random.key(0), ids, ids)['params'])
  tables = [v for k, v in flat.items() if k[-1].endswith('_embedding')]
  assert tables
  for table in tables:
    assert abs(float(np.std(table)) - 0.1) < 0.01


def test_lazy_adam_matches_dense_adam_on_the_first_step():
  # From zero moments, Adam's first update of a touched row does not depend on
  # other rows, and untouched rows get a zero update: lazy and dense agree.
  config = _config(optimizer='lazy_adam', learning_rate=0.01)
  model = models.GMF(20, 15, num_factors=4)
  ids = jnp.zeros((2,), jnp.int32)
  params = model.init(jax.random.key(0), ids, ids)['params']
  batch = dict(users=jnp.array([1, 1, 4, 7], jnp.int32), items=jnp.array([2, 9, 9, 0], jnp.int32),
               labels=jnp.array([1., 0., 1., 0.]), weights=jnp.ones(4))
  tx = optimizers.create_optimizer(config)
  lazy_state, _ = train_step_lib.make_train_step(model, tx, config)(
      train_step_lib.init_state(params, tx, 'lazy_adam'), batch)
  config.optimizer = 'adam'
  dense_state, _ = train_step_lib.make_train_step(model, tx, config)(
      train_step_lib.init_state(params, tx, 'adam'), batch)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                         lazy_state['params'], dense_state['params'])
  untouched = np.setdiff1d(np.arange(20), [1, 4, 7])
  np.testing.assert_array_equal(lazy_state['params']['gmf']['user_embedding'][untouched],
                                params['gmf']['user_embedding'][untouched])


def test_lazy_adam_leaves_absent_rows_alone_later():
  config = _config(optimizer='lazy_adam', learning_rate=0.01)
  model = models.GMF(20, 15, num_factors=4)
  ids = jnp.zeros((2,), jnp.int32)
  params = model.init(jax.random.key(0), ids, ids)['params']
  tx = optimizers.create_optimizer(config)
  step = jax.jit(train_step_lib.make_train_step(model, tx, config))
  state = train_step_lib.init_state(params, tx, 'lazy_adam')
  first = dict(users=jnp.array([1, 2], jnp.int32), items=jnp.array([3, 4], jnp.int32),
               labels=jnp.array([1., 0.]), weights=jnp.ones(2))
  second = dict(first, users=jnp.array([5, 6], jnp.int32))
  state, _ = step(state, first)
  after_first = np.asarray(state['params']['gmf']['user_embedding'])
  state, _ = step(state, second)
  after_second = np.asarray(state['params']['gmf']['user_embedding'])
  np.testing.assert_array_equal(after_first[[1, 2]], after_second[[1, 2]])  # dense Adam would move
  assert not np.allclose(after_first[[5, 6]], after_second[[5, 6]])


def test_validation_holdout_selects_the_epoch(tmp_path, capsys):
  config = _config(num_epochs=2, validation=True)
  _, history = train.train_and_evaluate(config, str(tmp_path))
  assert all('valid_hr' in r for r in history)
  assert 'selected on validation' in capsys.readouterr().out


def test_full_ranking_is_logged_when_asked(tmp_path):
  config = _config(num_epochs=1, full_ranking=True)
  _, history = train.train_and_evaluate(config, str(tmp_path))
  assert all(0 <= r['full_hr'] <= r['hr'] for r in history)  # all items is a harder test


@pytest.mark.parametrize('field,value', [('batch_size', 0), ('num_negatives', -1),
                                         ('optimizer', 'adamw'), ('model', 'gmf2'),
                                         ('learning_rate', 0.0)])
def test_bad_config_values_name_the_field(tmp_path, field, value):
  config = _config(**{field: value})
  with pytest.raises(ConfigError, match=f'config.{field}'):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize('optimizer', ['sgd', 'lazy_sgd', 'adam', 'lazy_adam'])
def test_cosine_schedule_starts_at_the_rate_and_ends_at_zero(optimizer):
  # Step 1 moves the parameters as a constant rate would; after `total_steps`
  # steps the rate is 0, so one more step changes nothing.
  total = 3
  config = _config(model='mf', optimizer=optimizer, learning_rate=0.1,
                   l2_embeddings_per_example=True)
  model = models.create_model(config, 20, 15)
  ids = jnp.zeros((2,), jnp.int32)
  params = model.init(jax.random.key(0), ids, ids)['params']

  def run(schedule, num_steps):
    config.learning_rate_schedule = schedule
    tx = optimizers.create_optimizer(config, total)
    step = jax.jit(train_step_lib.make_train_step(model, tx, config, total))
    state = train_step_lib.init_state(params, tx, optimizer)
    for _ in range(num_steps):
      state, _ = step(state, _mf_batch())
    return jax.tree_util.tree_map(np.asarray, state['params'])

  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                         run('cosine', 1), run('constant', 1))
  jax.tree_util.tree_map(np.testing.assert_array_equal, run('cosine', total + 1),
                         run('cosine', total))
  moved = run('cosine', total)['mf']['user_embedding'] - params['mf']['user_embedding']
  assert np.abs(moved).max() > 0


def test_unknown_schedule_is_a_config_error(tmp_path):
  config = _config(learning_rate_schedule='linear')
  with pytest.raises(ConfigError, match='learning_rate_schedule'):
    train.train_and_evaluate(config, str(tmp_path))
