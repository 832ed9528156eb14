"""Your own data end to end: a CSV with string ids -> `data prepare` -> one epoch of training ->
recommendations by original id, from Python and from the command line (with titles)."""

import numpy as np
import pytest

from conftest import error_lines, run_entry, run_module, train_quietly
from conftest import make_config
from ncf_jax.data import id_maps
from ncf_jax.recommend import Recommender
from test_data_csv import string_id_log, write_table


@pytest.fixture(scope='module')
def prepared_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('own')
  rows = string_id_log()
  raw = write_table(root / 'orders.csv', ['customer', 'product', 'ts'], rows)
  prepared = run_module('ncf_jax.data', 'prepare', f'--raw={raw}', '--format=csv',
                        '--user_col=customer', '--item_col=product', '--time_col=ts',
                        '--test_negatives=20', f'--out={root / "data"}')
  assert prepared.returncode == 0, prepared.stderr
  config = make_config(dataset='orders', data_dir=str(root / 'data'), num_epochs=1, top_k=5)
  train_quietly(config, root / 'run')
  titles = write_table(root / 'products.csv', ['productId', 'title'],
                       [(item, f'Title of {item}') for _, item, _ in rows])
  return root, rows, titles


def test_recommend_by_original_id_from_python(prepared_run):
  root, rows, _ = prepared_run
  recommender = Recommender.from_workdir(str(root / 'run'))
  maps = id_maps.read_id_maps(str(root / 'data'))
  assert recommender.id_maps == maps
  user = 'Zoë'  # a non-ASCII original id
  recommended = recommender.recommend(user, k=5)
  assert len(recommended) == 5
  bought = {item for u, item, _ in rows if u == user}
  known = set(maps.items)
  for item, probability in recommended:
    assert isinstance(item, str) and item in known and 0 < probability < 1
  # Training items are never recommended (the held-out test item may be).
  train_items = {maps.items[i] for u, i in zip(*_train_pairs(recommender))
                 if maps.users[u] == user}
  assert train_items and not train_items & {item for item, _ in recommended}
  assert train_items <= bought
  # Scores by original ids equal scores by index.
  items = [item for item, _ in recommended]
  by_id = recommender.score([user] * 5, items)
  np.testing.assert_allclose(by_id, [p for _, p in recommended], rtol=1e-6)


def _train_pairs(recommender):
  matrix = recommender.train_matrix.tocoo()
  return matrix.row, matrix.col


def test_recommend_command_prints_original_ids_and_titles(prepared_run):
  root, _, titles = prepared_run
  result = run_entry('ncf_jax.recommend', f'--workdir={root / "run"}', '--user=u_0003',
                     '--k=3', f'--items_meta={titles}', '--meta_id_col=productId',
                     '--meta_title_col=title')
  assert result.returncode == 0, result.stderr
  lines = [line.split('\t') for line in result.stdout.splitlines()]
  expected = Recommender.from_workdir(str(root / 'run')).recommend('u_0003', k=3)
  assert [(item, title) for item, _, title in lines] == [
      (item, f'Title of {item}') for item, _ in expected]


def test_unknown_original_user_is_one_line(prepared_run):
  root, _, _ = prepared_run
  errors = error_lines(run_entry('ncf_jax.recommend', f'--workdir={root / "run"}',
                                 '--user=lost 1'))  # dropped by data prepare: too few items
  assert len(errors) == 1 and "user 'lost 1': not in the dataset" in errors[0]
