"""Recommender: scores equal the model's, top-k excludes training items, errors are one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config, run_entry, train_quietly
from ncf_jax import recommend
from ncf_jax import run_settings
from ncf_jax.data import registry
from ncf_jax.errors import NcfError

BATCH = 32


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('rec') / 'neumf'
  config = make_config(num_epochs=1)
  train_quietly(config, workdir)
  rec = recommend.Recommender.from_workdir(str(workdir), batch_size=BATCH)
  return workdir, rec, registry.load_dataset(run_settings.data_settings(config))


def _model_probabilities(rec, users, items):
  logits = jax.jit(rec.model.apply)({'params': rec.params}, jnp.asarray(users, jnp.int32),
                                    jnp.asarray(items, jnp.int32))
  return np.asarray(jax.nn.sigmoid(logits))


def test_recommend_excludes_training_items_and_is_the_top_k(trained):
  _, rec, dataset = trained
  all_items = np.arange(dataset.num_items)
  for user in (0, 7, dataset.num_users - 1):
    top = rec.recommend(user, k=10)
    items = [item for item, _ in top]
    scores = np.array([score for _, score in top])
    seen = set(dataset.train_items[dataset.train_users == user].tolist())
    assert len(top) == 10 and len(set(items)) == 10
    assert not seen & set(items)
    assert np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores, _model_probabilities(rec, [user] * 10, items), rtol=1e-5,
                               atol=1e-6)
    # Nothing left out scores higher than the 10th.
    unseen = np.array([i for i in all_items if i not in seen])
    expected = _model_probabilities(rec, np.full(len(unseen), user), unseen)
    assert np.sort(expected)[-10] == pytest.approx(scores[-1], rel=1e-5, abs=1e-6)


def test_recommend_more_than_available_returns_all_unseen(trained):
  _, rec, dataset = trained
  user = 3
  unseen = dataset.num_items - np.sum(dataset.train_users == user)
  top = rec.recommend(user, k=dataset.num_items + 5)
  assert len(top) == unseen


def test_score_any_length_without_recompiling(trained):
  _, rec, dataset = trained
  rng = np.random.default_rng(0)
  for n in (1, BATCH, BATCH + 1, 3 * BATCH - 5):
    users = rng.integers(0, dataset.num_users, n)
    items = rng.integers(0, dataset.num_items, n)
    scores = rec.score(users, items)
    assert scores.shape == (n,)
    np.testing.assert_allclose(scores, _model_probabilities(rec, users, items), rtol=1e-5,
                               atol=1e-6)
  assert rec.score([], []).shape == (0,)
  assert rec._score_batch._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize('call, match', [
    (lambda r: r.score([0, -1], [0, 0]), 'unknown user id -1'),
    (lambda r: r.score([0], [80]), r'unknown item id 80 \(valid: 0..79\)'),
    (lambda r: r.score([0, 1], [0]), 'lengths differ'),
    (lambda r: r.score([0.5], [1]), 'expected integers'),
    (lambda r: r.recommend(120), 'unknown user id 120'),
    (lambda r: r.recommend(-3), 'unknown user id -3'),
    (lambda r: r.recommend(1, k=0), 'k=0'),
])
def test_unknown_ids_raise_one_line(trained, call, match):
  _, rec, _ = trained
  with pytest.raises(NcfError, match=match) as e:
    call(rec)
  assert isinstance(e.value, ValueError) and '\n' not in str(e.value)


def _cli(workdir, *flags):
  """The command in this process (`test_own_data` runs it as a process of its own)."""
  return run_entry('ncf_jax.recommend', f'--workdir={workdir}', *flags)


def test_cli_prints_k_lines_and_one_line_errors(trained, tmp_path):
  workdir, rec, _ = trained
  result = _cli(workdir, '--user=5', '--k=4')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 4
  parsed = [(int(item), float(score)) for item, score in (line.split('\t') for line in lines)]
  expected = rec.recommend(5, k=4)
  assert [item for item, _ in parsed] == [item for item, _ in expected]
  np.testing.assert_allclose([s for _, s in parsed], [s for _, s in expected], atol=1e-6)

  for flags, message in ((('--user=500',), 'unknown user id 500'),
                         (('--user=1',), 'config.json: missing')):
    target = workdir if flags[0] != '--user=1' else tmp_path
    result = _cli(target, *flags)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and message in errors[0], result.stderr
