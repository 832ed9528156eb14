"""Pretrained NeuMF: the merge is exact, mismatches fail clearly, train.py and the pipeline
use it."""

import contextlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncf_jax.configs import neumf_pretrained
from ncf_jax.configs import test as test_config
from ncf_jax import models
from ncf_jax import pipeline
from ncf_jax import pretrain
from ncf_jax import recommend
from ncf_jax import run_settings
from ncf_jax import train
from ncf_jax.data import registry
from ncf_jax.errors import CheckpointError, ConfigError, WorkdirError

NUM_USERS, NUM_ITEMS, FACTORS, LAYERS = 30, 20, 4, (16, 8, 4)


def _abstract(model) -> dict:
  dummy = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy)['params'])


def _random_params(model, seed: int) -> dict:
  """Every leaf (biases too) standard normal, so no term of the logit is negligible.
  Drawn with NumPy on `eval_shape`'s tree: no op-by-op JAX dispatch."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(x.dtype),
                                _abstract(model))


def _models(num_factors=FACTORS, layers=LAYERS):
  return (models.GMF(NUM_USERS, NUM_ITEMS, num_factors, layers),
          models.MLP(NUM_USERS, NUM_ITEMS, num_factors, layers),
          models.NeuMF(NUM_USERS, NUM_ITEMS, num_factors, layers))


def _quiet(fn, *args):
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args)


def test_merged_logit_is_alpha_mix_of_gmf_and_mlp():
  gmf, mlp, neumf = _models()
  gmf_params, mlp_params = _random_params(gmf, 1), _random_params(mlp, 2)
  rng = np.random.default_rng(0)
  users = jnp.asarray(rng.integers(0, NUM_USERS, 64), jnp.int32)
  items = jnp.asarray(rng.integers(0, NUM_ITEMS, 64), jnp.int32)
  g = jax.jit(gmf.apply)({'params': gmf_params}, users, items)
  m = jax.jit(mlp.apply)({'params': mlp_params}, users, items)
  assert float(jnp.std(g)) > 0.5 and float(jnp.std(m)) > 0.5  # non-trivial logits
  neumf_apply = jax.jit(neumf.apply)
  for alpha in (0.5, 1.0, 0.0, 0.3):
    merged = pretrain.merge_params(gmf_params, mlp_params, _abstract(neumf), alpha)
    n = neumf_apply({'params': merged}, users, items)
    np.testing.assert_allclose(n, alpha * g + (1 - alpha) * m, rtol=1e-5, atol=1e-5,
                               err_msg=f'alpha={alpha}')
    if alpha == 1.0:
      np.testing.assert_allclose(n, g, rtol=1e-6, atol=1e-6)
  # The towers are copied, not mixed.
  np.testing.assert_array_equal(merged['gmf']['user_embedding'],
                                gmf_params['gmf']['user_embedding'])
  np.testing.assert_array_equal(merged['mlp']['layer_0']['kernel'],
                                mlp_params['mlp']['layer_0']['kernel'])


def test_merge_rejects_other_num_factors_naming_workdir_and_path():
  _, mlp, neumf = _models()
  other_gmf = models.GMF(NUM_USERS, NUM_ITEMS, FACTORS + 2, LAYERS)
  with pytest.raises(CheckpointError) as e:
    pretrain.merge_params(_random_params(other_gmf, 1), _random_params(mlp, 2), _abstract(neumf),
                          0.5, gmf_where='/runs/gmf', mlp_where='/runs/mlp')
  message = str(e.value)
  assert message.startswith('/runs/gmf: parameter gmf/')
  assert f'expected ({NUM_ITEMS}, {FACTORS})' in message and '\n' not in message


def test_merge_rejects_other_mlp_tower_and_other_dataset_size():
  gmf, _, neumf = _models()
  other_mlp = models.MLP(NUM_USERS, NUM_ITEMS, FACTORS, (16, 8))  # one hidden layer fewer
  with pytest.raises(CheckpointError, match=r'^/runs/mlp: parameter .*(mlp/|head/)'):
    pretrain.merge_params(_random_params(gmf, 1), _random_params(other_mlp, 2), _abstract(neumf),
                          0.5, mlp_where='/runs/mlp')
  _, mlp, _ = _models()
  bigger_gmf = models.GMF(NUM_USERS + 1, NUM_ITEMS, FACTORS, LAYERS)
  with pytest.raises(CheckpointError, match=r'^/runs/gmf: parameter gmf/user_embedding has shape'):
    pretrain.merge_params(_random_params(bigger_gmf, 1), _random_params(mlp, 2), _abstract(neumf),
                          0.5, gmf_where='/runs/gmf')


def test_merge_rejects_alpha_outside_unit_interval():
  gmf, mlp, neumf = _models()
  with pytest.raises(ConfigError, match='config.alpha'):
    pretrain.merge_params(_random_params(gmf, 1), _random_params(mlp, 2), _abstract(neumf), 1.5)


def _tiny(config):
  """The synthetic test sizes (configs/test.py) on any config."""
  base = test_config.get_config()
  for key in ('dataset', 'batch_size', 'steps_per_dispatch', 'eval_users_per_block',
              'log_every_seconds'):
    config[key] = base[key]
  config.synthetic = base.synthetic
  config.num_epochs = 1
  return config


@pytest.fixture(scope='module')
def pipeline_dir(tmp_path_factory):
  """GMF, MLP and pretrained NeuMF, one epoch each, through the pipeline."""
  workdir = str(tmp_path_factory.mktemp('pipeline'))
  config = _tiny(neumf_pretrained.get_config())
  histories = _quiet(pipeline.run_pipeline, config, workdir)
  assert sorted(histories) == ['gmf', 'mlp', 'neumf']
  return workdir, config


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_pipeline_stages_and_configs(pipeline_dir):
  workdir, _ = pipeline_dir
  for name, optimizer in (('gmf', 'adam'), ('mlp', 'adam'), ('neumf', 'sgd')):
    with open(os.path.join(workdir, name, 'config.json'), encoding='utf-8') as f:
      stored = json.load(f)
    assert stored['model'] == name and stored['optimizer'] == optimizer
    assert stored['dataset'] == 'synthetic' and stored['synthetic']['num_users'] == 120
    assert [r['epoch'] for r in _records(os.path.join(workdir, name))] == [0, 1]
  with open(os.path.join(workdir, 'neumf', 'config.json'), encoding='utf-8') as f:
    stored = json.load(f)
  assert stored['gmf_workdir'] == os.path.join(workdir, 'gmf') and stored['alpha'] == 0.5


def test_pipeline_rerun_skips_finished_stages(pipeline_dir):
  workdir, config = pipeline_dir
  before = {name: _records(os.path.join(workdir, name)) for name in ('gmf', 'mlp', 'neumf')}
  assert _quiet(pipeline.run_pipeline, config, workdir) == {}
  assert {name: _records(os.path.join(workdir, name)) for name in before} == before


def test_epoch0_of_pretrained_neumf_scores_the_mean_of_the_two_runs_logits(pipeline_dir):
  """The epoch-0 record of the pretrained NeuMF run (alpha 0.5) is HR/NDCG of the mean of
  the GMF and MLP runs' best logits, recomputed here without the merge or the evaluator:
  each run read back as a reader does (`Recommender`), its own model's logits on every test
  candidate, and the rank rule in NumPy (ties count against the held-out item; copies of
  it among the negatives are not counted).

  (No HR bound is asserted: the mean of two logits can rank worse than either model.)
  """
  workdir, config = pipeline_dir
  record = _records(os.path.join(workdir, 'neumf'))[0]
  assert record['epoch'] == 0 and record['loss'] is None
  neumf_config = pipeline.stage_configs(config, workdir)[2][1]
  test = registry.load_dataset(run_settings.data_settings(neumf_config)).test
  candidates = np.concatenate([test.items[:, None], test.negatives], axis=1)
  users = jnp.asarray(np.repeat(test.users, candidates.shape[1]), jnp.int32)
  items = jnp.asarray(candidates.ravel(), jnp.int32)
  logits = 0.0
  for name in ('gmf', 'mlp'):
    run = recommend.Recommender.from_workdir(os.path.join(workdir, name))
    logits = logits + 0.5 * np.asarray(run.model.apply({'params': run.params}, users, items),
                                       np.float64)
  logits = logits.reshape(candidates.shape)
  counted = test.negatives != test.items[:, None]
  rank = ((logits[:, 1:] >= logits[:, :1]) & counted).sum(axis=1)
  hit = rank < config.top_k
  ndcg = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
  # The merged model sums the same terms in another order (float32): a near-tie may flip.
  one_user = 1.0 / len(test.users)
  assert record['hr'] == pytest.approx(hit.mean(), abs=one_user + 1e-12)
  assert record['ndcg'] == pytest.approx(ndcg.mean(), abs=one_user + 1e-9)
  assert 0.0 < record['hr'] < 1.0  # not a degenerate pair of runs


def test_pretrained_run_with_other_num_factors_fails(pipeline_dir, tmp_path):
  workdir, _ = pipeline_dir
  gmf4 = _tiny(test_config.get_config())
  gmf4.model, gmf4.num_factors, gmf4.num_epochs = 'gmf', 4, 0
  _quiet(train.train_and_evaluate, gmf4, str(tmp_path / 'gmf4'))
  config = _tiny(neumf_pretrained.get_config())
  config.gmf_workdir = str(tmp_path / 'gmf4')
  config.mlp_workdir = os.path.join(workdir, 'mlp')
  with pytest.raises(CheckpointError) as e:
    _quiet(train.train_and_evaluate, config, str(tmp_path / 'neumf'))
  assert str(e.value).startswith(f"{tmp_path / 'gmf4'}: parameter gmf/")
  assert 'expected' in str(e.value)


def test_wrong_or_missing_pretrained_workdirs(pipeline_dir, tmp_path):
  workdir, _ = pipeline_dir
  config = _tiny(neumf_pretrained.get_config())
  with pytest.raises(ConfigError, match='config.gmf_workdir: not set'):  # no silent fresh start
    _quiet(train.train_and_evaluate, config, str(tmp_path / 'z'))
  config.gmf_workdir = os.path.join(workdir, 'gmf')
  with pytest.raises(ConfigError, match='config.mlp_workdir'):
    _quiet(train.train_and_evaluate, config, str(tmp_path / 'a'))
  config.mlp_workdir = os.path.join(workdir, 'gmf')  # a GMF run where an MLP run belongs
  with pytest.raises(CheckpointError, match=r"gmf: a 'gmf' run .*expected 'mlp'"):
    _quiet(train.train_and_evaluate, config, str(tmp_path / 'b'))
  config.mlp_workdir = str(tmp_path / 'nothing')
  with pytest.raises(WorkdirError, match=r'nothing/config.json: missing'):
    _quiet(train.train_and_evaluate, config, str(tmp_path / 'c'))
  config.mlp_workdir = os.path.join(workdir, 'mlp')
  config.validation = True  # the pretrained runs saw the validation items
  with pytest.raises(CheckpointError, match='validation'):
    _quiet(train.train_and_evaluate, config, str(tmp_path / 'v'))
  config.validation = False
  config.seed = 1  # other synthetic data, same sizes
  with pytest.raises(CheckpointError, match='other synthetic data'):
    _quiet(train.train_and_evaluate, config, str(tmp_path / 'd'))
