"""Training: the loss falls, the model beats popularity, one compilation, metrics.jsonl."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
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
  pop = dataset.item_popularity
  ranks = (pop[dataset.test.negatives] > pop[dataset.test.items][:, None]).sum(1)
  return evaluation.summarize(ranks, k)['hr']


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


@pytest.mark.parametrize('optimizer', ['adam', 'lazy_adam', 'sgd', 'adagrad', 'rmsprop'])
def test_every_optimizer_reduces_the_loss(tmp_path, optimizer):
  lr = {'sgd': 0.5, 'adagrad': 0.05}.get(optimizer, 0.005)
  config = _config(num_epochs=3, optimizer=optimizer, learning_rate=lr, model='gmf')
  _, history = train.train_and_evaluate(config, str(tmp_path))
  assert history[-1]['loss'] < history[1]['loss']


def test_mf_baseline_trains_with_lazy_adam(tmp_path):
  config = _config(num_epochs=3, model='mf', optimizer='lazy_adam', learning_rate=0.01,
                   l2_embeddings=1e-4)
  _, history = train.train_and_evaluate(config, str(tmp_path))
  assert history[-1]['loss'] < history[1]['loss']
  assert history[-1]['hr'] > history[0]['hr']


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
      train_step_lib.init_state(params, tx, lazy=True), batch)
  config.optimizer = 'adam'
  dense_state, _ = train_step_lib.make_train_step(model, tx, config)(
      train_step_lib.init_state(params, tx, lazy=False), batch)
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
  state = train_step_lib.init_state(params, tx, lazy=True)
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
