"""NCF file format: round trips, and one-line errors that name file and line."""

import os

import numpy as np
import pytest

from conftest import write_ncf_dir
from ncf_jax.data import dataset as dataset_lib
from ncf_jax.data import ncf_format
from ncf_jax.data.files import atomic_write_text
from ncf_jax.errors import DataError


def _write_ratings(path, users, items, timestamps=None, ratings=None):
  """A `.rating` file as `data prepare` writes one."""
  atomic_write_text(path, ncf_format.ratings_text(users, items, timestamps, ratings))


NAME = 'toy'

# Users 0..3 over items 0..11; user 3 has a single training item.
TRAIN = [(0, 0, 10), (0, 1, 11), (0, 2, 12), (1, 2, 20), (1, 3, 21), (1, 4, 22),
         (2, 5, 30), (2, 6, 31), (3, 7, 40)]
TEST = [(0, 8), (1, 9), (2, 10), (3, 11)]
NEGATIVES = [(3, 4, 5), (0, 1, 5), (0, 1, 2), (0, 1, 2)]


def _lines(rows):
  return ''.join('\t'.join(map(str, row)) + '\n' for row in rows)


def _write_toy(directory, train=None, test=None, negative=None) -> str:
  """Writes a consistent NCF directory; any file's text can be replaced."""
  texts = {
      'train.rating': _lines((u, i, 1, t) for u, i, t in TRAIN) if train is None else train,
      'test.rating': _lines((u, i, 1, 0) for u, i in TEST) if test is None else test,
      'test.negative': ''.join(f'({u},{i})\t' + '\t'.join(map(str, n)) + '\n'
                               for (u, i), n in zip(TEST, NEGATIVES))
                       if negative is None else negative,
  }
  for suffix, text in texts.items():
    with open(os.path.join(directory, f'{NAME}.{suffix}'), 'w') as f:
      f.write(text)
  return str(directory)


def _replace_line(text: str, number: int, line: str) -> str:
  lines = text.splitlines()
  lines[number - 1] = line
  return '\n'.join(lines) + '\n'


def test_ratings_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  users = rng.integers(0, 10**6, 500).astype(np.int32)
  items = rng.integers(0, 10**5, 500).astype(np.int32)
  timestamps = rng.integers(0, 2 * 10**9, 500)
  timestamps[:3] = [0, 9, 10]  # digit-width edge cases
  path = str(tmp_path / 'x.rating')
  _write_ratings(path, users, items, timestamps)
  got_users, got_items, got_timestamps = ncf_format.read_ratings(path)
  np.testing.assert_array_equal(got_users, users)
  np.testing.assert_array_equal(got_items, items)
  np.testing.assert_array_equal(got_timestamps, timestamps)
  assert got_users.dtype == np.int32 and got_timestamps.dtype == np.int64
  assert open(path).readline() == f'{users[0]}\t{items[0]}\t1\t0\n'


def test_ratings_with_fractional_ratings_round_trip(tmp_path):
  path = str(tmp_path / 'x.rating')
  _write_ratings(path, np.array([0, 1]), np.array([5, 6]), np.array([7, 8]),
                           ratings=np.array([3.5, 4.0]))
  assert open(path).read() == '0\t5\t3.5\t7\n1\t6\t4\t8\n'
  np.testing.assert_array_equal(ncf_format.read_ratings(path)[1], [5, 6])


def test_negatives_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  users = np.arange(300, dtype=np.int32)
  items = rng.integers(0, 5000, 300).astype(np.int32)
  negatives = rng.integers(0, 5000, (300, 99)).astype(np.int32)
  path = str(tmp_path / 'x.negative')
  ncf_format.write_negatives(path, users, items, negatives)
  got = ncf_format.read_negatives(path)
  for want, have in zip((users, items, negatives), got):
    np.testing.assert_array_equal(have, want)
  first = open(path).readline()
  assert first.startswith(f'(0,{items[0]})\t{negatives[0, 0]}\t') and first.endswith('\n')


def test_writes_leave_no_temporary_files_and_usual_modes(tmp_path):
  _write_ratings(str(tmp_path / 'a.rating'), np.array([0]), np.array([1]))
  assert os.listdir(tmp_path) == ['a.rating']
  umask = os.umask(0o077)
  os.umask(umask)
  # As open() would create it, not private as mkstemp leaves it.
  assert os.stat(tmp_path / 'a.rating').st_mode & 0o777 == 0o666 & ~umask


def test_dataset_round_trip(tmp_path):
  data = dataset_lib.load_ncf_dir(_write_toy(tmp_path), NAME)
  assert (data.num_users, data.num_items, data.num_train, len(data.test)) == (4, 12, 9, 4)
  out = tmp_path / 'out'
  write_ncf_dir(data, str(out))
  again = dataset_lib.load_ncf_dir(str(out), NAME)
  for field in ('train_users', 'train_items', 'train_timestamps'):
    np.testing.assert_array_equal(getattr(again, field), getattr(data, field))
  np.testing.assert_array_equal(again.test.negatives, data.test.negatives)
  np.testing.assert_array_equal(data.test.negatives, NEGATIVES)


# case -> (edits: (file, line, new text)..., file and line the error must name, words in it)
BAD_CASES = {
    'wrong column count': ([('train.rating', 3, '0\t2\t1')], 'train.rating', 3, 'columns'),
    'non-number': ([('train.rating', 2, '0\tx\t1\t11')], 'train.rating', 2, 'not a number'),
    'non-integer id': ([('train.rating', 4, '1.5\t2\t1\t20')], 'train.rating', 4,
                       'not an integer'),
    'negative id': ([('test.rating', 2, '1\t-9\t1\t0')], 'test.rating', 2,
                    'not an integer >= 0'),
    'test user out of range': ([('test.rating', 3, '7\t10\t1\t0'),
                                ('test.negative', 3, '(7,10)\t0\t1\t2')],
                               'test.rating', 3, 'out of range'),
    'negative item out of range': ([('test.negative', 3, '(2,10)\t0\t99\t2')],
                                   'test.negative', 3, 'out of range'),
    'test item is a training positive': ([('test.rating', 2, '1\t3\t1\t0'),
                                          ('test.negative', 2, '(1,3)\t0\t1\t5')],
                                         'test.rating', 2, 'also a training positive'),
    'negative row disagrees with rating': ([('test.negative', 4, '(3,10)\t0\t1\t2')],
                                           'test.negative', 4, 'test.rating'),
    'different negative counts': ([('test.negative', 2, '(1,9)\t0\t1')], 'test.negative', 2,
                                  'expected 3 negative items after "(user,item)", found 2'),
    'not a pair': ([('test.negative', 1, '0,8\t3\t4\t5')], 'test.negative', 1,
                   '(user,item)'),
}


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_input_names_file_and_line(tmp_path, case):
  edits, suffix, expected_line, words = BAD_CASES[case]
  _write_toy(tmp_path)
  for edit_suffix, number, text in edits:
    path = tmp_path / f'{NAME}.{edit_suffix}'
    path.write_text(_replace_line(path.read_text(), number, text))
  with pytest.raises(DataError) as info:
    dataset_lib.load_ncf_dir(str(tmp_path), NAME)
  message = str(info.value)
  assert '\n' not in message
  assert message.startswith(f'{tmp_path / f"{NAME}.{suffix}"}:{expected_line}:'), message
  assert words in message, message


def test_user_without_training_data(tmp_path):
  train = _lines((u, i, 1, t) for u, i, t in TRAIN if u != 2)
  _write_toy(tmp_path, train=train)
  with pytest.raises(DataError, match=rf'{NAME}\.test\.rating:3: user 2 has no training data'):
    dataset_lib.load_ncf_dir(str(tmp_path), NAME)


def test_empty_file(tmp_path):
  _write_toy(tmp_path, test='')
  with pytest.raises(DataError, match=rf'{NAME}\.test\.rating: empty file'):
    dataset_lib.load_ncf_dir(str(tmp_path), NAME)


def test_empty_line(tmp_path):
  _write_toy(tmp_path, train=_lines((u, i, 1, t) for u, i, t in TRAIN[:2]) + '\n' +
             _lines((u, i, 1, t) for u, i, t in TRAIN[2:]))
  with pytest.raises(DataError, match=rf'{NAME}\.train\.rating:3: empty line'):
    dataset_lib.load_ncf_dir(str(tmp_path), NAME)


def test_missing_file(tmp_path):
  _write_toy(tmp_path)
  os.remove(tmp_path / f'{NAME}.test.negative')
  with pytest.raises(DataError, match=rf'{NAME}\.test\.negative: file not found'):
    dataset_lib.load_ncf_dir(str(tmp_path), NAME)


def test_validation_carved_per_user(tmp_path):
  data = dataset_lib.load_ncf_dir(_write_toy(tmp_path), NAME)
  carved = dataset_lib.load_ncf_dir(str(tmp_path), NAME, validation=True, seed=3)
  valid = carved.valid
  # Users 0..2 have >= 2 training items; user 3 has one and keeps it.
  np.testing.assert_array_equal(valid.users, [0, 1, 2])
  # Each user's latest training interaction (timestamps 12, 22, 31).
  np.testing.assert_array_equal(valid.items, [2, 4, 6])
  assert carved.num_train == data.num_train - 3
  assert not carved.train_set.contains(valid.users, valid.items).any()
  seen = {(u, i) for u, i, _ in TRAIN} | set(TEST)
  assert valid.negatives.shape == (3, len(NEGATIVES[0]))
  for user, row in zip(valid.users, valid.negatives):
    assert len(set(row.tolist())) == len(row)
    assert not any((int(user), int(item)) in seen for item in row)
  np.testing.assert_array_equal(carved.test.items, data.test.items)


def test_valid_files_are_read_or_folded_back(tmp_path):
  data = dataset_lib.load_ncf_dir(_write_toy(tmp_path), NAME)
  carved = dataset_lib.carve_validation(data, seed=0, num_negatives=2)
  out = str(tmp_path / 'out')
  write_ncf_dir(carved, out)
  with_valid = dataset_lib.load_ncf_dir(out, NAME, validation=True)
  np.testing.assert_array_equal(with_valid.valid.items, carved.valid.items)
  np.testing.assert_array_equal(with_valid.valid.negatives, carved.valid.negatives)
  assert with_valid.num_train == carved.num_train
  # Without validation the held-out rows train again, as in the unsplit data.
  folded = dataset_lib.load_ncf_dir(out, NAME)
  assert folded.valid is None
  np.testing.assert_array_equal(folded.train_users, data.train_users)
  np.testing.assert_array_equal(folded.train_items, data.train_items)
