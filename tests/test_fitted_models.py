"""iALS and EASE: their solves against NumPy written from the papers' definitions, and runs
through the ordinary run folder and evaluators."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config, read_records, train_quietly
from ncf_jax import ease
from ncf_jax import ials
from ncf_jax import recommend
from ncf_jax import trained_run
from ncf_jax.configs import ease as ease_config
from ncf_jax.configs import ials as ials_config


def _pairs(num_users, num_items, density, seed):
  x = np.random.default_rng(seed).random((num_users, num_items)) < density
  x[np.arange(num_users), np.arange(num_users) % num_items] = True  # nobody is empty
  users, items = np.nonzero(x)
  return x.astype(np.float64), users, items


def test_ease_matches_a_column_by_column_constrained_least_squares():
  x, users, items = _pairs(30, 9, 0.4, 0)
  lam = 3.0
  b = np.asarray(ease.item_weights(jnp.asarray(ease.interaction_matrix(users, items, 30, 9)),
                                   lam))
  # Steck's problem for column j: min ||x_j - X b||² + λ||b||² with b_j = 0, i.e. a ridge
  # regression of x_j on the other columns.
  for j in range(9):
    others = [k for k in range(9) if k != j]
    xo = x[:, others]
    ref = np.linalg.solve(xo.T @ xo + lam * np.eye(8), xo.T @ x[:, j])
    np.testing.assert_allclose(b[others, j], ref, rtol=1e-4, atol=1e-5)
    assert b[j, j] == 0.0


def _normal_equations(x, fixed, a0, lam, nu):
  """Each row's iALS solution, built term by term from the loss."""
  num_rows, num_other = x.shape
  out = []
  for n in range(num_rows):
    a = np.zeros((fixed.shape[1],) * 2)
    b = np.zeros(fixed.shape[1])
    for j in range(num_other):
      y = fixed[j]
      a += a0 * np.outer(y, y)  # every pair, observed or not, weighs α0 ŷ²
      if x[n, j]:
        a += np.outer(y, y)
        b += y
    a += lam * (x[n].sum() + a0 * num_other) ** nu * np.eye(fixed.shape[1])
    out.append(np.linalg.solve(a, b))
  return np.array(out)


@pytest.mark.parametrize('dense_limit', [0, 10**6], ids=['blocked', 'dense'])
def test_ials_user_solve_matches_the_normal_equations(dense_limit):
  x, users, items = _pairs(7, 11, 0.3, 1)
  rng = np.random.default_rng(2)
  h = rng.normal(0, 0.5, (11, 4))
  settings = ials.Settings(unobserved_weight=0.3, regularization=0.05,
                           regularization_exponent=0.7, cg_steps=12, block=5)
  pairs = ials.Pairs.build(users, items, 7, settings.block, 11, dense_limit)
  assert (pairs.dense is None) == (dense_limit == 0)
  got = ials.solve_side(pairs, jnp.asarray(h, jnp.float32),
                        jnp.asarray(rng.normal(0, 0.1, (7, 4)), jnp.float32), settings)
  np.testing.assert_allclose(np.asarray(got), _normal_equations(x, h, 0.3, 0.05, 0.7),
                             rtol=2e-3, atol=2e-4)


def _numpy_loss(x, w, h, a0, lam, nu):
  pred = w @ h.T
  reg_u = lam * (x.sum(1) + a0 * x.shape[1]) ** nu
  reg_i = lam * (x.sum(0) + a0 * x.shape[0]) ** nu
  return (np.sum(x * (pred - 1) ** 2) + a0 * np.sum(pred ** 2)
          + np.sum(reg_u * (w ** 2).sum(1)) + np.sum(reg_i * (h ** 2).sum(1)))


@pytest.mark.parametrize('dense_limit', [0, 10**6], ids=['blocked', 'dense'])
def test_ials_loss_is_the_papers_and_decreases_every_sweep(dense_limit):
  x, users, items = _pairs(40, 25, 0.2, 3)
  settings = ials.Settings(unobserved_weight=0.2, regularization=0.01, cg_steps=3, block=16)
  by_user = ials.Pairs.build(users, items, 40, settings.block, 25, dense_limit)
  by_item = ials.Pairs.build(items, users, 25, settings.block, 40, dense_limit)
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(0, 0.1, (40, 6)), jnp.float32)
  h = jnp.asarray(rng.normal(0, 0.1, (25, 6)), jnp.float32)
  before = _numpy_loss(x, np.asarray(w), np.asarray(h), 0.2, 0.01, 1.0)
  assert float(ials.loss(by_user, w, h, by_item.counts, settings)) == pytest.approx(before,
                                                                                  rel=1e-4)
  losses = [before]
  for _ in range(5):
    w, h, value = ials.sweep(by_user, by_item, w, h, settings)
    assert float(value) == pytest.approx(
        _numpy_loss(x, np.asarray(w), np.asarray(h), 0.2, 0.01, 1.0), rel=1e-4)
    losses.append(float(value))
  assert all(b < a for a, b in zip(losses, losses[1:])), losses


def _fitted_config(module, **fields):
  config = module.get_config()
  base = make_config()
  config.dataset = 'synthetic'
  config.synthetic = base.synthetic
  config.validation = True
  config.full_ranking = True
  config.log_every_seconds = 0.0
  for key, value in fields.items():
    config[key] = value
  return config


def test_ials_trains_into_a_run_folder_and_beats_popularity(tmp_path):
  config = _fitted_config(ials_config, num_factors=16, num_epochs=4, regularization=0.01)
  _, history = train_quietly(config, tmp_path)
  records = read_records(tmp_path)
  assert [r['epoch'] for r in records] == [0, 1, 2, 3, 4]
  losses = [r['loss'] for r in records[1:]]
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  for field in ('valid_hr', 'full_hr', 'corrected_hr'):
    assert field in records[-1]
  lo, hi = records[-1]['test']['hr_ci95']
  assert lo <= records[-1]['hr'] <= hi
  assert max(r['hr'] for r in records[1:]) > records[0]['hr'] + 0.2
  # Readers restore it like any run, and scores agree with the stored embeddings.
  trained = trained_run.load_best(str(tmp_path))
  params = trained.params
  rec = recommend.Recommender.from_workdir(str(tmp_path))
  tables = params
  logits = np.asarray(tables['user_embedding'][3] @ tables['item_embedding'][np.array([1, 7])].T)
  np.testing.assert_allclose(np.asarray(rec.score(np.array([3, 3]), np.array([1, 7]))),
                             1 / (1 + np.exp(-logits)), rtol=1e-5)
  # Resuming trains only the missing epochs.
  config.num_epochs = 5
  train_quietly(config, tmp_path)
  assert [r['epoch'] for r in read_records(tmp_path)] == [0, 1, 2, 3, 4, 5]


def test_ease_trains_into_a_run_folder_and_scores_x_times_b(tmp_path):
  config = _fitted_config(ease_config, regularization=10.0)
  train_quietly(config, tmp_path)
  records = read_records(tmp_path)
  assert [r['epoch'] for r in records] == [0, 1]
  assert records[1]['hr'] > 0.5 and records[1]['full_hr'] > records[0]['full_hr']
  trained = trained_run.load_best(str(tmp_path))
  model, params = trained.model, trained.params
  x = np.asarray(params['user_embedding'])
  assert set(np.unique(x)) <= {0.0, 1.0}
  b = np.asarray(params['item_embedding']).T
  assert np.all(np.diag(b) == 0.0)
  got = model.apply({'params': params}, jnp.array([0, 5]), jnp.array([2, 9]))
  np.testing.assert_allclose(np.asarray(got), [(x @ b)[0, 2], (x @ b)[5, 9]], rtol=1e-5,
                             atol=1e-6)
