"""Training: the loss falls, the model beats popularity, one compilation, metrics.jsonl, the
best checkpoint is the best epoch's."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config as _config
from conftest import train_quietly
from ncf_jax import evaluation
from ncf_jax import kept_programs
from ncf_jax import run_dir
from ncf_jax import run_settings
from ncf_jax import trained_run
from ncf_jax import train
from ncf_jax import train_step as train_step_lib
from ncf_jax.data import registry
from ncf_jax.errors import ConfigError


def _popularity_hr(dataset, k=10):
  return evaluation.item_popularity(dataset, k)['hr']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """NeuMF on a mid-sized synthetic set, long enough to learn the planted clusters."""
  config = _config(num_epochs=6, batch_size=256, learning_rate=0.005,
                   synthetic=dict(num_users=400, num_items=200, interactions_per_user=30,
                                  num_test_negatives=99))
  workdir = tmp_path_factory.mktemp('trained')
  state, history = train_quietly(config, workdir)
  return config, workdir, state, history


def test_loss_falls_and_model_beats_popularity(trained):
  config, _, _, history = trained
  losses = [r['loss'] for r in history[1:]]
  assert losses[-1] < 0.8 * losses[0]
  dataset = registry.load_dataset(run_settings.data_settings(config))
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


def test_best_checkpoint_is_the_first_epoch_with_the_best_test_hr(trained):
  config, workdir, _, history = trained
  hrs = [r['hr'] for r in history]
  first_best = hrs.index(max(hrs))
  assert run_dir.best_record(history)['epoch'] == first_best
  best = trained_run.load_best(str(workdir))
  assert best.epoch == first_best
  dataset = registry.load_dataset(run_settings.data_settings(config))
  evaluator = evaluation.SampledEvaluator(best.model, dataset.test)
  assert evaluator(best.params, config.top_k)['hr'] == max(hrs)


def test_validation_selects_the_best_checkpoint(tmp_path):
  config = _config(num_epochs=3, validation=True, learning_rate=0.01)
  _, history = train_quietly(config, tmp_path)
  valid = [r['valid_hr'] for r in history]
  assert trained_run.load_best(str(tmp_path)).epoch == valid.index(max(valid))


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
  kept_programs.forget()  # an earlier test's run of these settings would be reused
  # 3 epochs, each ending in a short chunk (a different trip count), one trace.
  config = _config(num_epochs=3, steps_per_dispatch=5)
  train_quietly(config, tmp_path)
  assert len(traces) == 1


@pytest.mark.parametrize('optimizer', ['adam', 'lazy_adam', 'sgd', 'lazy_sgd', 'adagrad', 'rmsprop'])
def test_every_optimizer_reduces_the_loss(tmp_path, optimizer):
  lr = {'sgd': 0.5, 'lazy_sgd': 0.5, 'adagrad': 0.05}.get(optimizer, 0.005)
  config = _config(num_epochs=3, optimizer=optimizer, learning_rate=lr, model='gmf')
  _, history = train_quietly(config, tmp_path)
  assert history[-1]['loss'] < history[1]['loss']


def test_mf_baseline_trains_with_lazy_adam(tmp_path):
  config = _config(num_epochs=3, model='mf', optimizer='lazy_adam', learning_rate=0.01,
                   l2_embeddings=1e-4, l2_embeddings_per_example=True)
  _, history = train_quietly(config, tmp_path)
  assert history[-1]['loss'] < history[1]['loss']
  assert history[-1]['hr'] > history[0]['hr']


def test_lazy_optimizer_with_whole_table_l2_is_refused(tmp_path):
  config = _config(optimizer='lazy_sgd', l2_embeddings=1e-4)
  with pytest.raises(ConfigError, match='l2_embeddings_per_example'):
    train_quietly(config, tmp_path / 'run')
  assert not os.listdir(tmp_path)


def test_validation_holdout_selects_the_epoch(tmp_path, capsys):
  config = _config(num_epochs=2, validation=True)
  _, history = train.train_and_evaluate(config, str(tmp_path))
  assert all('valid_hr' in r for r in history)
  assert 'selected on validation' in capsys.readouterr().out


def test_full_ranking_is_logged_when_asked(tmp_path):
  config = _config(num_epochs=1, full_ranking=True)
  _, history = train_quietly(config, tmp_path)
  assert all(0 <= r['full_hr'] <= r['hr'] for r in history)  # all items is a harder test


@pytest.mark.parametrize('field,value', [('batch_size', 0), ('num_negatives', -1),
                                         ('optimizer', 'adamw'), ('model', 'gmf2'),
                                         ('learning_rate', 0.0)])
def test_bad_config_values_name_the_field(tmp_path, field, value):
  config = _config(**{field: value})
  with pytest.raises(ConfigError, match=f'config.{field}'):
    train_quietly(config, tmp_path / 'run')
  assert not os.listdir(tmp_path)  # nothing written before the config is known to work


def test_unknown_schedule_is_a_config_error(tmp_path):
  config = _config(learning_rate_schedule='linear')
  with pytest.raises(ConfigError, match='learning_rate_schedule'):
    train_quietly(config, tmp_path)


@pytest.mark.parametrize('model,embedding_sharding', [('neumf', 'replicated'), ('mf', 'rows')])
def test_a_fresh_state_on_one_device_is_flaxs_eager_init_bit_for_bit(model, embedding_sharding):
  # One compiled program draws the state; the reference is Flax's `model.init` run eagerly
  # from the same seed (the dense layers op by op; the tables by `row_init`'s own per-shape
  # program, checked against jax.random.normal in test_row_sharded_meshes.py), so numbers
  # published before the draw was compiled re-run exactly.
  config = _config(model=model, seed=7, embedding_sharding=embedding_sharding,
                   optimizer='lazy_adam', l2_embeddings_per_example=True)
  experiment = train.build(run_settings.read(config))
  state = train.initial_state(experiment)
  ids = jnp.zeros((1,), jnp.int32)
  reference = flax.traverse_util.flatten_dict(
      experiment.model.init(jax.random.key(config.seed), ids, ids)['params'])
  params = flax.traverse_util.flatten_dict(state['params'])
  assert params.keys() == reference.keys()
  for path, value in reference.items():
    np.testing.assert_array_equal(np.asarray(params[path]), np.asarray(value), err_msg=path)
  assert int(state['step']) == 0
  moments = [np.asarray(m) for m in jax.tree_util.tree_leaves(state['opt_state'])
             if jnp.issubdtype(m.dtype, jnp.floating)]
  assert moments and not any(m.any() for m in moments)


def test_a_run_of_equal_settings_reuses_the_programs_and_other_settings_get_their_own(
    tmp_path, monkeypatch):
  built = []  # one call per train step built (a chunk program made anew)
  make_step = train_step_lib.make_train_step
  monkeypatch.setattr(train_step_lib, 'make_train_step',
                      lambda *a, **k: built.append(1) or make_step(*a, **k))
  ranks_programs = evaluation._sampled_ranks_program.cache_info  # pylint: disable=protected-access

  def run(workdir, **overrides):
    config = _config(**{'num_epochs': 1, **overrides})
    return [(r['loss'], r['hr'], r['ndcg']) for r in train_quietly(config, tmp_path / workdir)[1]]

  first = run('first')  # (its programs may be kept already, from another test)
  built_before, misses = len(built), ranks_programs().misses
  assert run('again') == first  # equal settings: nothing traced again
  assert len(built) == built_before and ranks_programs().misses == misses
  # Rates no other test uses, so no earlier run in this worker built these programs. A
  # longer run at a constant rate: the same programs, and its first epoch is the same.
  shorter = run('shorter', learning_rate=0.0234)
  built_before = len(built)
  assert run('longer', learning_rate=0.0234, num_epochs=2)[:2] == shorter
  assert len(built) == built_before
  # A decaying rate's schedule is the run's length: a program for each length.
  run('cosine', learning_rate_schedule='cosine', learning_rate=0.0345)
  run('cosine_longer', learning_rate_schedule='cosine', learning_rate=0.0345, num_epochs=2)
  assert len(built) == built_before + 2
  built_before += 2
  # Another optimizer (a rate no other test uses): a program of its own...
  other = run('other', learning_rate=0.0123)
  assert len(built) == built_before + 1 and other[1:] != first[1:]
  kept_programs.forget()
  assert run('afresh', learning_rate=0.0123) == other  # ...computing what a fresh one does
  assert len(built) == built_before + 2
  assert ranks_programs().misses == 1  # (forgetting restarts the count)
