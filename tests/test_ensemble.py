"""An ensemble of trained runs: mean logits, evaluated like one model."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config, read_records, train_quietly
from ncf_jax import ensemble
from ncf_jax import run_dir
from ncf_jax import trained_run
from ncf_jax.errors import ConfigError


def _run(workdir, **overrides):
  train_quietly(make_config(num_epochs=2, full_ranking=True, **overrides), workdir)
  return str(workdir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('ensemble')
  return (_run(root / 'mf', model='mf', optimizer='lazy_adam', learning_rate=0.01),
          _run(root / 'gmf', model='gmf', learning_rate=0.01))


def _best_record(workdir):
  return run_dir.best_record(read_records(workdir))


def _member_logits(workdir, users, items, method=None):
  """A member's logits, loaded on its own (not through the ensemble)."""
  trained = trained_run.load_best(workdir)
  return trained.model.apply({'params': trained.params}, users, items,
                             **({'method': method(trained.model)} if method else {}))


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
  members = [_member_logits(w, users, items) for w in runs]
  assert not np.allclose(members[0], members[1])
  np.testing.assert_allclose(logits, (members[0] + members[1]) / 2, rtol=1e-6)
  all_items = jnp.arange(10, dtype=jnp.int32)
  full = model.apply({'params': params}, users, all_items, method=model.score_matrix)
  member_full = [_member_logits(w, users, all_items, lambda m: m.score_matrix) for w in runs]
  np.testing.assert_allclose(full, (member_full[0] + member_full[1]) / 2, rtol=1e-5, atol=1e-6)


def test_members_of_other_data_are_refused(runs, tmp_path):
  other = _run(tmp_path / 'top5', model='mf', optimizer='lazy_adam', top_k=5)
  with pytest.raises(ConfigError, match='config.top_k'):
    ensemble.load_ensemble([runs[0], other])
  other_data = _run(tmp_path / 'data1', model='mf', optimizer='lazy_adam',
                    synthetic=dict(seed=1))
  with pytest.raises(ConfigError, match='config.synthetic'):
    ensemble.load_ensemble([runs[0], other_data])


def test_runs_of_other_seeds_train_on_the_same_synthetic_data(runs, tmp_path):
  reseeded = _run(tmp_path / 'seed1', model='mf', optimizer='lazy_adam', seed=1)
  model, params, dataset = ensemble.load_ensemble([runs[0], reseeded])
  users, items = dataset.test.users[:5], dataset.test.items[:5]
  members = [_member_logits(w, users, items) for w in (runs[0], reseeded)]
  assert not np.allclose(members[0], members[1])  # other seeds: other models, same data
  np.testing.assert_allclose(model.apply({'params': params}, users, items),
                             (members[0] + members[1]) / 2, rtol=1e-6)
