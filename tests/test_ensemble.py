"""An ensemble of trained runs: mean logits, evaluated like one model."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from ncf_jax.configs import test as test_config
from ncf_jax import ensemble
from ncf_jax import pretrain
from ncf_jax import train
from ncf_jax.errors import ConfigError


def _run(workdir, **overrides):
  config = test_config.get_config()
  config.update(dict(num_epochs=2, full_ranking=True, **overrides))
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('ensemble')
  return (_run(root / 'mf', model='mf', optimizer='lazy_adam', learning_rate=0.01),
          _run(root / 'gmf', model='gmf', learning_rate=0.01))


def _best_record(workdir):
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return max(records, key=lambda r: r['hr'])


def test_one_member_is_that_run(runs):
  result = ensemble.evaluate_ensemble([runs[0]])
  best = _best_record(runs[0])
  assert (result['hr'], result['ndcg']) == pytest.approx((best['hr'], best['ndcg']))
  assert (result['full_hr'], result['full_ndcg']) == pytest.approx(
      (best['full_hr'], best['full_ndcg']))


def test_the_ensemble_scores_the_mean_of_its_members_logits(runs):
  model, params, _ = ensemble.load_ensemble(list(runs))
  users, items = jnp.array([0, 3, 7], jnp.int32), jnp.array([5, 1, 2], jnp.int32)
  logits = model.apply({'params': params}, users, items)
  members = [model.members[i].apply({'params': params[f'members_{i}']}, users, items)
             for i in range(2)]
  np.testing.assert_allclose(logits, (members[0] + members[1]) / 2, rtol=1e-6)
  full = model.apply({'params': params}, users, jnp.arange(10, dtype=jnp.int32),
                     method=model.score_matrix)
  np.testing.assert_allclose(full[jnp.arange(3), items], logits, rtol=1e-5, atol=1e-6)


def test_members_of_other_data_are_refused(runs, tmp_path):
  other = _run(tmp_path / 'top5', model='mf', optimizer='lazy_adam', top_k=5)
  with pytest.raises(ConfigError, match='config.top_k'):
    ensemble.load_ensemble([runs[0], other])
  config = test_config.get_config()
  config.synthetic.seed = 1
  other_data = _run(tmp_path / 'data1', model='mf', optimizer='lazy_adam',
                    synthetic=config.synthetic)
  with pytest.raises(ConfigError, match='config.synthetic'):
    ensemble.load_ensemble([runs[0], other_data])


def test_runs_of_other_seeds_train_on_the_same_synthetic_data(runs, tmp_path):
  reseeded = _run(tmp_path / 'seed1', model='mf', optimizer='lazy_adam', seed=1)
  model, params, _ = ensemble.load_ensemble([runs[0], reseeded])
  assert len(model.members) == 2 and set(params) == {'members_0', 'members_1'}
