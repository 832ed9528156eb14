"""Raw MovieLens -> NCF files: the protocol, determinism, and file:line errors."""

import os

import numpy as np
import pytest

from ncf_jax.data import dataset as dataset_lib
from ncf_jax.data import prepare
from ncf_jax.errors import DataError

FORMATS = ('ml-100k', 'ml-1m', 'ml-20m')
NUM_KEPT = 15
TIED_USER = 0  # kept user whose two latest interactions share a timestamp
DUPLICATE_USER = 3  # kept user who rated one item twice, the second time last of all


def make_rows(seed: int = 0) -> tuple[list[tuple[int, int, float, int]], np.ndarray]:
  """(user, item, rating, timestamp) rows with sparse raw ids, in shuffled file order.

  Users 0..14 (by creation) have 20-39 distinct items; three more have 19
  distinct items but 22 rows (duplicates), so they must be dropped. The last
  three rows bring items seen nowhere else: a test-only item of user 1 and a
  test-only and a validation-only item of user 2. Also returns the raw user
  ids in order of creation.
  """
  rng = np.random.default_rng(seed)
  raw_users = rng.choice(np.arange(1, 10**5), NUM_KEPT + 3, replace=False)
  pool = rng.choice(np.arange(1, 10**4), 303, replace=False)
  rows = []
  for k, user in enumerate(raw_users):
    count = 19 if k >= NUM_KEPT else int(rng.integers(20, 40))
    items = rng.choice(pool[:300], count, replace=False)
    times = rng.integers(1000, 1030, count)  # a narrow range: many ties
    if k == TIED_USER:
      times[:2] = 1100
    rows += [(user, item, float(rng.integers(1, 11)) / 2, t) for item, t in zip(items, times)]
    duplicates = 3 if k >= NUM_KEPT else 1
    for item in items[-duplicates:]:
      later = 5000 if k == DUPLICATE_USER else 1040
      rows.append((user, item, 4.0, later))
  order = rng.permutation(len(rows))
  rows = [rows[j] for j in order]
  rows += [(raw_users[2], pool[300], 3.0, 2001),  # user 2's test item
           (raw_users[1], pool[301], 3.0, 2000),  # user 1's test item
           (raw_users[2], pool[302], 3.0, 2000)]  # user 2's validation item
  return [(int(u), int(i), r, int(t)) for u, i, r, t in rows], raw_users


def write_raw(path, rows, fmt: str) -> str:
  """Writes rows in a raw MovieLens format; ML-20M keeps half stars."""
  rating = (lambda r: f'{r:g}') if fmt == 'ml-20m' else (lambda r: f'{int(r)}')
  sep = {'ml-100k': '\t', 'ml-1m': '::', 'ml-20m': ','}[fmt]
  header = 'userId,movieId,rating,timestamp\n' if fmt == 'ml-20m' else ''
  with open(path, 'w') as f:
    f.write(header + ''.join(f'{u}{sep}{i}{sep}{rating(r)}{sep}{t}\n' for u, i, r, t in rows))
  return str(path)


def reference(rows, min_interactions: int = 20):
  """The protocol's interactions in plain Python: {new user: {new item: timestamp}}."""
  earliest = {}
  for user, item, _, t in rows:
    earliest[user, item] = min(t, earliest.get((user, item), t))
  count = {}
  for user, _ in earliest:
    count[user] = count.get(user, 0) + 1
  user_ids, item_ids = {}, {}
  for user, item, _, _ in rows:
    if count[user] >= min_interactions:
      user_ids.setdefault(user, len(user_ids))
      item_ids.setdefault(item, len(item_ids))
  out = {}
  for (user, item), t in earliest.items():
    if user in user_ids:
      out.setdefault(user_ids[user], {})[item_ids[item]] = t
  return out, user_ids, item_ids


def interactions(data: dataset_lib.Dataset) -> dict:
  """{user: {item: timestamp}} of train, with held-out items marked by timestamp None."""
  out = {}
  for u, i, t in zip(data.train_users, data.train_items, data.train_timestamps):
    out.setdefault(int(u), {})[int(i)] = int(t)
  for held in (data.test, data.valid):
    if held is not None:
      for u, i in zip(held.users, held.items):
        assert int(i) not in out.get(int(u), {}), 'held-out item also in training'
        out.setdefault(int(u), {})[int(i)] = None
  return out


def check_negatives(data: dataset_lib.Dataset, held: dataset_lib.HeldOut, seen: dict) -> None:
  assert held.negatives.shape == (data.num_users, prepare.NUM_NEGATIVES)
  assert held.negatives.min() >= 0 and held.negatives.max() < data.num_items
  for user, row in zip(held.users, held.negatives):
    assert len(set(row.tolist())) == len(row), 'negatives repeat'
    assert not set(row.tolist()) & set(seen[int(user)]), 'a negative was interacted with'


@pytest.mark.parametrize('fmt', FORMATS)
def test_protocol(tmp_path, fmt):
  rows, _ = make_rows()
  raw = write_raw(tmp_path / 'raw', rows, fmt)
  data = prepare.prepare(raw, fmt, str(tmp_path / 'out'))
  expected, user_ids, item_ids = reference(rows)

  assert data.name == fmt
  assert data.num_users == NUM_KEPT == len(user_ids)  # the 19-item users are gone
  assert data.num_items == len(item_ids)
  got = interactions(data)
  assert sorted(got) == list(range(data.num_users))
  assert {u: set(items) for u, items in got.items()} == {
      u: set(items) for u, items in expected.items()}
  # Test item: a latest interaction; everything else keeps its earliest timestamp.
  for user, item in zip(data.test.users, data.test.items):
    times = expected[int(user)]
    assert times[int(item)] == max(times.values())
  np.testing.assert_array_equal(data.test.users, np.arange(data.num_users))
  for user, items in got.items():
    for item, t in items.items():
      assert t is None or t == expected[user][item]
  # Training pairs are unique and sorted by (user, item).
  keys = data.train_users.astype(np.int64) * data.num_items + data.train_items
  assert np.all(np.diff(keys) > 0)
  check_negatives(data, data.test, got)

  loaded = dataset_lib.load_ncf_dir(str(tmp_path / 'out'), fmt)
  assert (loaded.num_users, loaded.num_items) == (data.num_users, data.num_items)
  np.testing.assert_array_equal(loaded.train_items, data.train_items)
  np.testing.assert_array_equal(loaded.train_timestamps, data.train_timestamps)
  np.testing.assert_array_equal(loaded.test.negatives, data.test.negatives)


def test_duplicates_count_once_at_their_earliest_time(tmp_path):
  rows, raw_users = make_rows()
  data = prepare.prepare(write_raw(tmp_path / 'raw', rows, 'ml-100k'), 'ml-100k',
                         str(tmp_path / 'out'))
  expected, user_ids, item_ids = reference(rows)
  user = user_ids[raw_users[DUPLICATE_USER]]
  # Re-rated last of all (t=5000), but first rated earlier: not the test item.
  raw_item = [i for u, i, _, t in rows if t == 5000][0]
  assert data.test.items[user] != item_ids[raw_item]
  assert data.num_train + len(data.test) == sum(len(v) for v in expected.values())


def test_items_seen_only_when_held_out_are_in_range(tmp_path):
  rows, _ = make_rows()
  out = str(tmp_path / 'out')
  data = prepare.prepare(write_raw(tmp_path / 'raw', rows, 'ml-1m'), 'ml-1m', out,
                         protocol=prepare.Protocol(validation=True))
  _, user_ids, item_ids = reference(rows)
  test_only, valid_only = item_ids[rows[-2][1]], item_ids[rows[-1][1]]
  assert valid_only == data.num_items - 1 and test_only == data.num_items - 2
  assert data.valid.items[user_ids[rows[-1][0]]] == valid_only
  assert data.test.items[user_ids[rows[-2][0]]] == test_only
  assert valid_only not in data.train_items and test_only not in data.train_items
  loaded = dataset_lib.load_ncf_dir(out, 'ml-1m', validation=True)
  assert loaded.num_items == data.num_items


def test_ties_are_broken_by_the_seed(tmp_path):
  rows, raw_users = make_rows()
  raw = write_raw(tmp_path / 'raw', rows, 'ml-100k')
  _, user_ids, item_ids = reference(rows)
  user = user_ids[raw_users[TIED_USER]]
  tied = {item_ids[i] for u, i, _, t in rows if t == 1100}
  picks = {int(prepare.prepare(raw, 'ml-100k', str(tmp_path / 'out'),
                               protocol=prepare.Protocol(seed=s)).test.items[user])
           for s in range(8)}
  assert picks == tied  # both tied items get picked, by different seeds


def test_same_seed_same_files(tmp_path):
  raw = write_raw(tmp_path / 'raw', make_rows()[0], 'ml-20m')
  for out in ('a', 'b'):
    prepare.prepare(raw, 'ml-20m', str(tmp_path / out),
                    protocol=prepare.Protocol(seed=5, validation=True))
  prepare.prepare(raw, 'ml-20m', str(tmp_path / 'c'),
                  protocol=prepare.Protocol(seed=6, validation=True))
  for name in sorted(os.listdir(tmp_path / 'a')):
    a, b, c = ((tmp_path / out / name).read_bytes() for out in 'abc')
    if name != 'dataset.json':  # it records the seed
      assert a == b, name
    if name.endswith('.negative'):
      assert a != c, name


def test_validation_holdout(tmp_path):
  rows, _ = make_rows()
  raw = write_raw(tmp_path / 'raw', rows, 'ml-100k')
  plain = prepare.prepare(raw, 'ml-100k', str(tmp_path / 'plain'),
                          protocol=prepare.Protocol(seed=2))
  data = prepare.prepare(raw, 'ml-100k', str(tmp_path / 'valid'),
                         protocol=prepare.Protocol(seed=2, validation=True))
  expected, _, _ = reference(rows)
  got = interactions(data)

  # The test split does not depend on whether a validation split is made.
  np.testing.assert_array_equal(data.test.items, plain.test.items)
  np.testing.assert_array_equal(data.test.negatives, plain.test.negatives)
  assert data.num_train == plain.num_train - data.num_users
  for user, item, test_item in zip(data.valid.users, data.valid.items, data.test.items):
    remaining = {i: t for i, t in expected[int(user)].items() if i != int(test_item)}
    assert remaining[int(item)] == max(remaining.values())
  assert not data.train_set.contains(data.valid.users, data.valid.items).any()
  check_negatives(data, data.valid, got)
  assert (data.valid.negatives != plain.test.negatives).any()

  directory = str(tmp_path / 'valid')
  assert os.path.isfile(os.path.join(directory, 'ml-100k.valid.negative'))
  loaded = dataset_lib.load_ncf_dir(directory, 'ml-100k', validation=True)
  np.testing.assert_array_equal(loaded.valid.items, data.valid.items)
  np.testing.assert_array_equal(loaded.valid.negatives, data.valid.negatives)
  folded = dataset_lib.load_ncf_dir(directory, 'ml-100k')
  np.testing.assert_array_equal(folded.train_items, plain.train_items)

  # Preparing again without validation removes the stale validation files.
  prepare.prepare(raw, 'ml-100k', directory, protocol=prepare.Protocol(seed=2))
  assert not os.path.exists(os.path.join(directory, 'ml-100k.valid.rating'))


def _corrupt(path: str, number: int, line: str) -> None:
  lines = open(path).read().splitlines()
  lines[number - 1] = line
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


SEPARATORS = {'ml-100k': '\t', 'ml-1m': '::', 'ml-20m': ','}
# case -> (line fields, words in the error)
BAD_ROWS = {
    'too few fields': (['7', '8', '3'], 'expected 4 fields'),
    'too many fields': (['7', '8', '3', '1000', '9'], 'expected 4 fields'),
    'non-integer user': (['7.5', '8', '3', '1000'], "user id '7.5' is not an integer >= 0"),
    'non-numeric item': (['7', 'abc', '3', '1000'], "item id 'abc' is not an integer >= 0"),
    'non-numeric rating': (['7', '8', 'good', '1000'], "rating 'good' is not a number"),
    'negative item': (['7', '-8', '3', '1000'], "item id '-8' is not an integer >= 0"),
    'infinite rating': (['7', '8', 'inf', '1000'], "rating 'inf' is not finite"),
    'non-numeric timestamp': (['7', '8', '3', 'noon'], "timestamp 'noon' is not a number"),
    'fractional timestamp': (['7', '8', '3', '10.5'], "timestamp '10.5' is not an integer"),
}


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('case', sorted(BAD_ROWS))
def test_bad_row_names_file_and_line(tmp_path, fmt, case):
  fields, words = BAD_ROWS[case]
  raw = write_raw(tmp_path / 'raw', make_rows()[0][:50], fmt)
  number = 7 if fmt == 'ml-20m' else 6  # the same row; ML-20M has a header line
  _corrupt(raw, number, SEPARATORS[fmt].join(fields))
  with pytest.raises(DataError) as info:
    prepare.prepare(raw, fmt, str(tmp_path / 'out'))
  message = str(info.value)
  assert message.startswith(f'{raw}:{number}: '), message
  assert words in message and '\n' not in message, message
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('fmt', FORMATS)
def test_empty_line_names_its_line(tmp_path, fmt):
  raw = write_raw(tmp_path / 'raw', make_rows()[0][:50], fmt)
  _corrupt(raw, 4, '')
  with pytest.raises(DataError, match=r':4: empty line$'):
    prepare.prepare(raw, fmt, str(tmp_path / 'out'))


def test_wrong_header(tmp_path):
  raw = write_raw(tmp_path / 'raw', make_rows()[0][:50], 'ml-20m')
  _corrupt(raw, 1, 'user,item,rating,timestamp')
  with pytest.raises(DataError, match=r":1: no column 'userId' in the header; its columns are: "
                     r"'user', 'item', 'rating', 'timestamp'$"):
    prepare.prepare(raw, 'ml-20m', str(tmp_path / 'out'))


def test_empty_and_missing_files(tmp_path):
  raw = write_raw(tmp_path / 'raw', [], 'ml-20m')
  with pytest.raises(DataError, match=r'raw: no data rows after the header$'):
    prepare.prepare(raw, 'ml-20m', str(tmp_path / 'out'))
  raw = write_raw(tmp_path / 'raw', [], 'ml-1m')
  with pytest.raises(DataError, match=r'raw: empty file$'):
    prepare.prepare(raw, 'ml-1m', str(tmp_path / 'out'))
  with pytest.raises(DataError, match=r'nothing: file not found'):
    prepare.prepare(str(tmp_path / 'nothing'), 'ml-1m', str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


def test_too_few_items_for_negatives(tmp_path):
  rows = [(u, i, 3.0, i) for u in range(1, 4) for i in range(1, 41)]
  raw = write_raw(tmp_path / 'raw', rows, 'ml-1m')
  with pytest.raises(DataError, match=r"raw:1: user '1' interacted with 40 of the 40 items, "
                     'leaving fewer than --test_negatives=99'):
    prepare.prepare(raw, 'ml-1m', str(tmp_path / 'out'))


@pytest.mark.parametrize('validation,least', [(False, 2), (True, 3)])
def test_min_user_interactions_must_leave_training_data(tmp_path, validation, least):
  protocol = prepare.Protocol(min_user_interactions=least - 1, validation=validation)
  with pytest.raises(DataError, match=f'--min_user_interactions={least - 1}: .* at least {least}'):
    prepare.prepare('unused', 'ml-1m', str(tmp_path), protocol=protocol)
