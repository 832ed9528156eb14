"""Many users at once: `Recommender.recommend_many` and `recommend --users_file --out` against
a plain NumPy reference (score every item, drop training items, sort)."""

import csv
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import error_lines, run_entry
from ncf_jax import recommend
from ncf_jax import run_settings
from ncf_jax.data import registry
from ncf_jax.errors import NcfError
from test_own_data import prepared_run  # pylint: disable=unused-import


@pytest.fixture(scope='module')
def rec(prepared_run):  # pylint: disable=redefined-outer-name
  root = prepared_run[0]
  return recommend.Recommender.from_workdir(str(root / 'run'))


def _reference(rec, root, user_ids, k):
  """Per user: every item scored by the model's pairwise call, training items dropped,
  sorted by score then item index; as (original item id, probability)."""
  dataset = registry.load_dataset(run_settings.data_settings(registry_config(root)))
  users_tsv = (root / 'data' / 'users.tsv').read_text().splitlines()
  items_tsv = (root / 'data' / 'items.tsv').read_text().splitlines()
  out = []
  for original in user_ids:
    user = users_tsv.index(original)
    items = np.arange(dataset.num_items)
    logits = np.asarray(rec.model.apply({'params': rec.params},
                                        jnp.full(len(items), user, jnp.int32),
                                        jnp.asarray(items, jnp.int32)), np.float64)
    seen = set(dataset.train_items[dataset.train_users == user].tolist())
    candidates = np.array([i for i in items if i not in seen])
    order = sorted(candidates, key=lambda i: (-logits[i], i))[:k]
    out.append([(items_tsv[i], 1 / (1 + np.exp(-logits[i]))) for i in order])
  return out


def registry_config(root):
  from ncf_jax import run_dir  # pylint: disable=g-import-not-at-top
  return run_dir.RunDir(str(root / 'run')).read_config()


def _check(found, expected):
  assert len(found) == len(expected)
  for got, want in zip(found, expected):
    assert [item for item, _ in got] == [item for item, _ in want]
    np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-5)


def test_recommend_many_is_the_numpy_reference(prepared_run, rec, monkeypatch):
  root = prepared_run[0]
  users = list(rec.id_maps.users)
  chosen = [users[3], users[0], users[-1], users[3]] + users[5:14]  # a repeat included
  monkeypatch.setattr(rec, '_users_per_block', lambda: 4)  # several blocks, the last padded
  _check(rec.recommend_many(chosen, k=5), _reference(rec, root, chosen, 5))
  assert rec.recommend_many(chosen[:1], k=5) == [rec.recommend(chosen[0], k=5)]


def test_one_compilation_for_any_number_of_users(rec, monkeypatch):
  monkeypatch.setattr(rec, '_users_per_block', lambda: 4)
  users = list(rec.id_maps.users)
  rec.recommend_many(users[:1], k=3)
  compiled = rec._top_k._cache_size()  # pylint: disable=protected-access
  for count in (3, 4, 9, len(users)):
    rec.recommend_many(users[:count], k=3)
  assert rec._top_k._cache_size() == compiled  # pylint: disable=protected-access


def test_fewer_items_left_than_k(prepared_run, rec):
  root = prepared_run[0]
  users = list(rec.id_maps.users)[:3]
  found = rec.recommend_many(users, k=rec.num_items)
  _check(found, _reference(rec, root, users, rec.num_items))
  assert all(len(top) < rec.num_items for top in found)


def test_unknown_ids_in_the_users_file(rec, tmp_path):
  users = list(rec.id_maps.users)
  path = tmp_path / 'users.txt'
  path.write_text(f'{users[0]}\n\n{users[1]}\nnobody\n{users[2]}\nnobody either\n')
  with pytest.raises(NcfError) as info:
    recommend.read_users_file(str(path), rec)
  assert str(info.value) == (f"{path}:4: unknown user id 'nobody' (--skip_unknown to skip "
                             'such lines)')
  assert recommend.read_users_file(str(path), rec, skip_unknown=True) == (users[:3], [4, 6])


def test_users_file_command_writes_the_csv(prepared_run, rec, tmp_path):
  root = prepared_run[0]
  users = list(rec.id_maps.users)[:6]
  path = tmp_path / 'users.txt'
  path.write_text(''.join(f'{u}\n' for u in users))
  out = tmp_path / 'recs.csv'
  result = run_entry('ncf_jax.recommend', f'--workdir={root / "run"}', f'--users_file={path}',
                     '--k=4', f'--out={out}')
  assert result.returncode == 0, result.stderr
  with open(out, newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['user', 'rank', 'item', 'score']
  expected = _reference(rec, root, users, 4)
  assert len(rows) == 1 + 4 * len(users)
  for (user, rank, item, score), (u, r) in zip(rows[1:], [(u, r) for u in users
                                                          for r in range(4)]):
    want_item, want_score = expected[users.index(u)][r]
    assert (user, int(rank), item) == (u, r + 1, want_item)
    assert float(score) == pytest.approx(want_score, rel=1e-5)
  assert os.listdir(tmp_path) == ['users.txt', 'recs.csv'] or sorted(os.listdir(tmp_path)) == [
      'recs.csv', 'users.txt']

  path.write_text(f'{users[0]}\nnobody\n')
  out.unlink()
  result = run_entry('ncf_jax.recommend', f'--workdir={root / "run"}', f'--users_file={path}',
                     f'--out={out}')
  assert error_lines(result) == [f"error: {path}:2: unknown user id 'nobody' "
                                 '(--skip_unknown to skip such lines)']
  assert not out.exists()
  result = run_entry('ncf_jax.recommend', f'--workdir={root / "run"}', f'--users_file={path}',
                     f'--out={out}', '--skip_unknown')
  assert result.returncode == 0, result.stderr
  assert 'skipped 1 unknown user id(s)' in result.stderr and 'line 2' in result.stderr
  assert len(out.read_text().splitlines()) == 1 + 10
