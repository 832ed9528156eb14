"""The in-memory dataset: compact id arrays, the training matrix, held-out rows."""

import dataclasses
import functools
import glob
import os

import numpy as np
import scipy.sparse

from ncf_jax.data import ncf_format
from ncf_jax.data.interactions import InteractionSet
from ncf_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """One held-out item per row, to be ranked against that row's negatives."""
  users: np.ndarray  # (R,) int32
  items: np.ndarray  # (R,) int32
  negatives: np.ndarray  # (R, N) int32

  def __len__(self) -> int:
    return len(self.users)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Implicit feedback split for leave-one-out evaluation.

  Training pairs are unique and sorted by (user, item). `valid` is a second
  holdout carved from training (or read from `.valid.*` files) for honest
  model selection; None when not requested. `source_dir`: the directory the
  files were read from or written to (None for data made in memory); its id
  maps, if any, come from `id_maps.id_maps_for(dataset)`.
  """
  name: str
  num_users: int
  num_items: int
  train_users: np.ndarray  # (P,) int32
  train_items: np.ndarray  # (P,) int32
  train_timestamps: np.ndarray  # (P,) int64; all equal when the file has placeholders
  test: HeldOut
  valid: HeldOut | None = None
  source_dir: str | None = None

  @property
  def num_train(self) -> int:
    return len(self.train_users)

  @functools.cached_property
  def train_matrix(self) -> scipy.sparse.csr_matrix:
    """(num_users, num_items) boolean CSR matrix of training positives."""
    indptr = np.zeros(self.num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(self.train_users, minlength=self.num_users), out=indptr[1:])
    data = np.ones(self.num_train, dtype=bool)
    return scipy.sparse.csr_matrix((data, self.train_items, indptr),
                                   shape=(self.num_users, self.num_items))

  @functools.cached_property
  def train_set(self) -> InteractionSet:
    """Membership test for training pairs (negative sampling rejects these)."""
    return InteractionSet(self.train_users, self.train_items, self.num_users, self.num_items)

  @functools.cached_property
  def train_and_heldout_set(self) -> InteractionSet:
    """Training pairs plus every held-out (test, validation) pair.

    What training negatives avoid when held-out items are kept out of them
    (`exclude_heldout_from_negatives`); the original code rejects training pairs only.
    """
    held = [h for h in (self.test, self.valid) if h is not None]
    return InteractionSet(np.concatenate([self.train_users] + [h.users for h in held]),
                          np.concatenate([self.train_items] + [h.items for h in held]),
                          self.num_users, self.num_items)

  @functools.cached_property
  def item_popularity(self) -> np.ndarray:
    """(num_items,) int64 count of training interactions per item."""
    return np.bincount(self.train_items, minlength=self.num_items)

  def stats(self) -> dict:
    """Summary numbers, e.g. for `python -m ncf_jax.data stats`."""
    held = self.test.negatives == self.test.items[:, None]
    out = dict(name=self.name, num_users=self.num_users, num_items=self.num_items,
               num_train=self.num_train, num_test=len(self.test),
               num_test_negatives=int(self.test.negatives.shape[1]),
               test_rows_listing_heldout_among_negatives=int(held.any(axis=1).sum()),
               density=self.num_train / (self.num_users * self.num_items))
    if self.valid is not None:
      out.update(num_valid=len(self.valid), num_valid_negatives=int(self.valid.negatives.shape[1]))
    return out


def _sorted_unique_pairs(users, items, timestamps):
  keys = users.astype(np.int64) * (int(items.max()) + 1) + items
  _, first = np.unique(keys, return_index=True)  # sorted by key = (user, item)
  return users[first], items[first], timestamps[first]




def negatives_path(directory: str, name: str, split: str) -> str:
  """The negatives file of a split: `.negative.npy` when present, else `.negative`."""
  text = os.path.join(directory, f'{name}.{split}.negative')
  return text + ncf_format.NPY if os.path.isfile(text + ncf_format.NPY) else text


def has_ncf_files(directory: str, name: str) -> bool:
  """Whether `directory` holds `<name>`'s training, test and test negatives files."""
  ratings = [os.path.join(directory, f'{name}.{split}.rating') for split in ('train', 'test')]
  return all(map(os.path.isfile, ratings + [negatives_path(directory, name, 'test')]))


def ncf_name_in(directory: str) -> str:
  """The `<name>` of the single `<name>.train.rating` in `directory`."""
  found = sorted(glob.glob(os.path.join(glob.escape(directory), '*.train.rating')))
  if len(found) != 1:
    what = 'no' if not found else f'{len(found)}'
    raise DataError(f'{directory}: expected one <name>.train.rating file, found {what}')
  return os.path.basename(found[0])[:-len('.train.rating')]


def _read_negatives(path_rating: str, path_negative: str, rating) -> np.ndarray:
  """The negatives of a held-out file's rows, from text or .npy, checked to match its rows."""
  users, items, _ = rating
  if path_negative.endswith(ncf_format.NPY):
    return ncf_format.read_negatives_npy(path_negative, len(users))
  n_users, n_items, negatives = ncf_format.read_negatives(path_negative)
  if len(n_users) != len(users):
    raise DataError(f'{path_negative}: {len(n_users)} rows, but {path_rating} has {len(users)}')
  disagree = (n_users != users) | (n_items != items)
  if disagree.any():
    line = int(np.argmax(disagree)) + 1
    raise DataError(f'{path_negative}:{line}: row is ({n_users[line - 1]},{n_items[line - 1]}) '
                    f'but line {line} of {path_rating} is ({users[line - 1]},{items[line - 1]})')
  return negatives


def _check_heldout(path_rating: str, path_negative: str, rating, negatives: np.ndarray,
                   num_users: int, num_items: int, train: InteractionSet,
                   has_train: np.ndarray) -> HeldOut:
  users, items, _ = rating
  for name, values, bound, path in (('user', users, num_users, path_rating),
                                    ('item', items, num_items, path_rating),
                                    ('negative item', negatives.max(axis=1), num_items,
                                     path_negative)):
    if (values >= bound).any():
      line = int(np.argmax(values >= bound)) + 1
      where = f'{path}: row {line - 1}' if path.endswith(ncf_format.NPY) else f'{path}:{line}'
      raise DataError(f'{where}: {name} id {int(values[line - 1])} is out of range '
                      f'(training has ids 0..{bound - 1})')
  no_train = ~has_train[users]
  if no_train.any():
    line = int(np.argmax(no_train)) + 1
    raise DataError(f'{path_rating}:{line}: user {users[line - 1]} has no training data')
  leaked = train.contains(users, items)
  if leaked.any():
    line = int(np.argmax(leaked)) + 1
    raise DataError(f'{path_rating}:{line}: held-out item {items[line - 1]} of user '
                    f'{users[line - 1]} is also a training positive')
  return HeldOut(users, items, negatives)


def _check_ids_are_dense(ratings: dict[str, tuple]) -> None:
  """DataError when ids run far beyond the number of distinct ones (they need renumbering).

  Ids index embedding tables: one item id of 10,000,000 among 3,706 items
  would make a table of 10 million rows.
  """
  for column, what in ((0, 'user'), (1, 'item')):
    ids = np.concatenate([r[column] for r in ratings.values()])
    if not len(ids):
      continue
    # A count per id is cheap while ids are dense; sorting finds the distinct ones otherwise.
    dense = int(ids.max()) < 4 * len(ids) + 2**20
    distinct = np.count_nonzero(np.bincount(ids)) if dense else len(np.unique(ids))
    limit = 2 * distinct + 1000
    for path, rating in ratings.items():
      values = rating[column]
      if len(values) and values.max() > limit:
        line = int(np.argmax(values)) + 1
        raise DataError(f'{path}:{line}: {what} id {values[line - 1]} is far beyond the '
                        f'{distinct} distinct {what} ids of these files; renumber them from 0 '
                        'with `python -m ncf_jax.data prepare`')


def load_ncf_dir(directory: str, name: str, validation: bool = False, seed: int = 0) -> Dataset:
  """Reads and validates `<directory>/<name>.{train.rating,test.rating,test.negative}`.

  Negatives come from `<name>.test.negative.npy` instead when that exists.
  With `validation`, a `.valid.rating`/`.valid.negative` pair is read if present,
  else a validation holdout is carved from training (see `carve_validation`).
  Without it, the rows of a `.valid.rating` file go back into training, so a
  directory prepared with a validation split trains on the same data as one
  prepared without.
  """
  path = lambda suffix: os.path.join(directory, f'{name}.{suffix}')
  ratings = {path('train.rating'): ncf_format.read_ratings(path('train.rating')),
             path('test.rating'): ncf_format.read_ratings(path('test.rating'))}
  if os.path.exists(path('valid.rating')):
    ratings[path('valid.rating')] = ncf_format.read_ratings(path('valid.rating'))
  _check_ids_are_dense(ratings)
  users, items, timestamps = ratings[path('train.rating')]
  test_rating = ratings[path('test.rating')]
  valid_rating = ratings.get(path('valid.rating'))
  test_negatives = _read_negatives(path('test.rating'), negatives_path(directory, name, 'test'),
                                   test_rating)
  if valid_rating is not None and not validation:
    users, items, timestamps = (np.concatenate(pair) for pair in zip((users, items, timestamps),
                                                                     valid_rating))
  num_users = int(users.max()) + 1
  # Items held out for test (or validation) only are still items to rank.
  num_items = int(max(items.max(), test_rating[1].max(),
                      valid_rating[1].max() if valid_rating is not None else 0)) + 1
  users, items, timestamps = _sorted_unique_pairs(users, items, timestamps)
  train = InteractionSet(users, items, num_users, num_items)
  has_train = np.bincount(users, minlength=num_users) > 0
  test = _check_heldout(path('test.rating'), negatives_path(directory, name, 'test'),
                        test_rating, test_negatives, num_users, num_items, train, has_train)
  valid = None
  if validation and valid_rating is not None:
    valid_path = negatives_path(directory, name, 'valid')
    valid = _check_heldout(path('valid.rating'), valid_path, valid_rating,
                           _read_negatives(path('valid.rating'), valid_path, valid_rating),
                           num_users, num_items, train, has_train)
  dataset = Dataset(name, num_users, num_items, users, items, timestamps, test, valid,
                    source_dir=os.path.abspath(directory))
  if validation and valid is None:
    dataset = carve_validation(dataset, seed=seed, num_negatives=test.negatives.shape[1])
  return dataset


def latest_per_user(users: np.ndarray, timestamps: np.ndarray, num_users: int,
                    rng: np.random.Generator) -> np.ndarray:
  """Index of each user's latest interaction (-1 for users without any).

  Equal timestamps (all of them, in files with placeholder timestamps) are
  broken by a seeded random draw, never by item id, which would bias the pick.
  """
  newest = np.full(num_users, np.iinfo(np.int64).min)
  np.maximum.at(newest, users, timestamps)
  tiebreak = rng.random(len(users))
  tiebreak[timestamps != newest[users]] = -1.0
  best = np.full(num_users, -1.0)
  np.maximum.at(best, users, tiebreak)
  winners = np.flatnonzero((tiebreak == best[users]) & (tiebreak >= 0))
  last = np.full(num_users, -1, dtype=np.int64)
  last[users[winners]] = winners
  return last


def carve_validation(dataset: Dataset, seed: int, num_negatives: int = 99) -> Dataset:
  """Moves each user's latest training interaction (of users with >= 2) to `valid`.

  Validation negatives are drawn uniformly, seeded, from the items the user has
  not interacted with (training, validation or test).
  """
  rng = np.random.default_rng([seed, 0x5A11D])
  counts = np.bincount(dataset.train_users, minlength=dataset.num_users)
  last = latest_per_user(dataset.train_users, dataset.train_timestamps, dataset.num_users, rng)
  chosen = np.sort(last[(last >= 0) & (counts >= 2)])
  keep = np.ones(dataset.num_train, dtype=bool)
  keep[chosen] = False
  v_users, v_items = dataset.train_users[chosen], dataset.train_items[chosen]
  seen = InteractionSet(np.concatenate([dataset.train_users, dataset.test.users]),
                        np.concatenate([dataset.train_items, dataset.test.items]),
                        dataset.num_users, dataset.num_items)
  negatives = sample_distinct_negatives(rng, v_users, seen, dataset.num_items, num_negatives)
  return dataclasses.replace(
      dataset, train_users=dataset.train_users[keep], train_items=dataset.train_items[keep],
      train_timestamps=dataset.train_timestamps[keep],
      valid=HeldOut(v_users, v_items, negatives))


_SORT_WIDTH = 512  # candidates per row up to which sorting rows beats marking bits
_MAX_CANDIDATES = 1 << 25  # candidates drawn at once: bounds memory (about 40 bytes each)


def sample_distinct_negatives(rng: np.random.Generator, users: np.ndarray, seen: InteractionSet,
                              num_items: int, num_negatives: int) -> np.ndarray:
  """(len(users), num_negatives) int32: per row distinct items the user has not seen.

  Draws a surplus of uniform candidates per row, drops seen items and repeats,
  and keeps the first `num_negatives` in draw order (a uniform sample without
  replacement); rows left short are drawn again. Users are taken in chunks
  when there are many candidates (ML-20M with 999 negatives), one chunk when
  they fit (ML-20M with 99).
  """
  rows = max(1, _MAX_CANDIDATES // (2 * num_negatives + 8))
  if len(users) <= rows:
    return _sample_distinct(rng, users, seen, num_items, num_negatives)
  return np.concatenate([_sample_distinct(rng, users[start:start + rows], seen, num_items,
                                          num_negatives)
                         for start in range(0, len(users), rows)])


def later_copies(cand: np.ndarray, num_items: int) -> np.ndarray:
  """Bool (rows, width): whether each entry repeats an item earlier in its row.

  Narrow rows are sorted (stably) row by row; wide ones (999 negatives) are
  scanned column by column against a bitmap of the items seen so far in each
  row, which costs less than sorting them. Both give the same answer.
  """
  rows, width = cand.shape
  repeat = np.zeros(cand.shape, dtype=bool)
  if width <= _SORT_WIDTH:
    order = np.argsort(cand, axis=1, kind='stable')
    sorted_cand = np.take_along_axis(cand, order, axis=1)
    in_sorted_order = np.zeros(cand.shape, dtype=bool)
    in_sorted_order[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
    np.put_along_axis(repeat, order, in_sorted_order, axis=1)
    return repeat
  row_bytes = (num_items + 7) // 8
  seen = np.zeros(rows * row_bytes, dtype=np.uint8)  # bit i of row r: item i seen in r
  row_base = np.arange(rows, dtype=np.int64) * row_bytes
  bits = np.left_shift(np.uint8(1), np.arange(8, dtype=np.uint8))
  by_column = np.ascontiguousarray(cand.T)
  repeat_by_column = np.empty((width, rows), dtype=bool)
  for j in range(width):
    where = row_base + (by_column[j] >> 3)
    bit = bits[by_column[j] & 7]
    before = seen[where]
    repeat_by_column[j] = (before & bit) != 0
    seen[where] = before | bit
  return repeat_by_column.T


def _sample_distinct(rng: np.random.Generator, users: np.ndarray, seen: InteractionSet,
                     num_items: int, num_negatives: int) -> np.ndarray:
  """`sample_distinct_negatives` for one chunk of users."""
  out = np.empty((len(users), num_negatives), dtype=np.int32)
  todo = np.arange(len(users))
  width = 2 * num_negatives + 8
  while todo.size:
    cand = rng.integers(0, num_items, size=(todo.size, width), dtype=np.int32)
    valid = ~seen.contains(np.repeat(users[todo], width), cand.ravel()).reshape(cand.shape)
    valid &= ~later_copies(cand, num_items)
    rank = np.cumsum(valid, axis=1, dtype=np.int32)
    done = rank[:, -1] >= num_negatives
    pick = valid & (rank <= num_negatives)
    out[todo[done]] = cand[done][pick[done]].reshape(-1, num_negatives)
    todo = todo[~done]
    width *= 2
    if todo.size and width > 64 * (num_items + num_negatives):
      raise DataError(f'user {users[todo[0]]} has fewer than {num_negatives} items '
                      'they have not interacted with, to sample negatives from')
  return out


def stage_ncf_files(staged, dataset: Dataset, negatives_format: str = 'text') -> list[str]:
  """Adds `dataset`'s NCF files to a `files.StagedFiles`; returns their names.

  `negatives_format`: 'text' (`.negative`) or 'npy' (`.negative.npy`).
  """
  names = []

  def add(suffix: str, text: str) -> None:
    names.append(f'{dataset.name}.{suffix}')
    staged.add_text(names[-1], text)

  add('train.rating', ncf_format.ratings_text(dataset.train_users, dataset.train_items,
                                              dataset.train_timestamps))
  for split, held in (('test', dataset.test), ('valid', dataset.valid)):
    if held is None:
      continue
    add(f'{split}.rating', ncf_format.ratings_text(held.users, held.items))
    if negatives_format == 'npy':
      names.append(f'{dataset.name}.{split}.negative{ncf_format.NPY}')
      staged.add(names[-1], functools.partial(ncf_format.write_negatives_npy,
                                              negatives=held.negatives), binary=True)
    else:
      add(f'{split}.negative', ncf_format.negatives_text(held.users, held.items, held.negatives))
  return names


def stale_ncf_files(directory: str, name: str, written: list[str]) -> list[str]:
  """`<name>`'s NCF files in `directory` that an earlier run wrote and this one did not."""
  suffixes = ('train.rating', 'test.rating', 'valid.rating', 'test.negative', 'valid.negative')
  candidates = [f'{name}.{s}' for s in suffixes] + [f'{name}.{s}{ncf_format.NPY}'
                                                     for s in suffixes if 'negative' in s]
  return [os.path.join(directory, f) for f in candidates
          if f not in written and os.path.exists(os.path.join(directory, f))]
