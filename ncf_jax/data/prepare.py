"""Raw MovieLens ratings -> NCF files, with the NCF paper's protocol.

Protocol (He et al. 2017, Section 4.1), as implemented here:
- every rating is an implicit positive, whatever its value; a (user, item) pair
  rated more than once counts once, at its earliest timestamp;
- users with fewer than `min_interactions` (20) distinct items are dropped;
- ids are contiguous from 0: users and items numbered in order of first
  appearance in the file (among the rows that are kept);
- each user's latest interaction is the test item; equal timestamps are broken
  by a seeded random draw (`dataset.latest_per_user`), never by id;
- 99 test negatives per user, uniform, distinct, seeded, from the items the
  user never interacted with;
- optionally a validation holdout: the latest remaining interaction per user,
  with its own 99 negatives drawn the same way (written as `.valid.*`). The
  test split does not depend on whether a validation split is made.

Parsing runs in NumPy's C reader; only when it fails does a line-by-line pass
name the first bad line.
"""

import dataclasses
import io
import os

import numpy as np

from ncf_jax.data.dataset import (Dataset, HeldOut, latest_per_user, sample_distinct_negatives,
                                  write_ncf_dir)
from ncf_jax.data.interactions import InteractionSet
from ncf_jax.errors import DataError

NUM_NEGATIVES = 99


@dataclasses.dataclass(frozen=True)
class _Format:
  delimiter: bytes  # in the file
  header: bytes | None  # expected first line, if the format has one


FORMATS = {
    'ml-100k': _Format(b'\t', None),  # u.data: user item rating timestamp
    'ml-1m': _Format(b'::', None),  # ratings.dat: UserID::MovieID::Rating::Timestamp
    'ml-20m': _Format(b',', b'userId,movieId,rating,timestamp'),  # ratings.csv; 3.5 stars
}
_COLUMNS = 4
# Ratings are parsed only to check them: every rating counts as a positive.
_ROW = np.dtype([('user', np.int64), ('item', np.int64), ('rating', np.float64),
                 ('timestamp', np.int64)])


def _first_bad_line(path: str, data: bytes, start: int, fmt: _Format, first_line: int) -> str:
  """Names the first line the fast reader cannot accept (slow; errors only)."""
  names = ('user', 'item', 'rating', 'timestamp')
  lines = io.BytesIO(data)
  lines.seek(start)
  for number, line in enumerate(lines, start=first_line):
    fields = line.rstrip(b'\r\n').split(fmt.delimiter)
    if len(fields) != _COLUMNS:
      return (f'{path}:{number}: expected {_COLUMNS} fields separated by '
              f'{fmt.delimiter.decode()!r}, found {len(fields)}')
    for name, field in zip(names, fields):
      text = field.decode('utf-8', errors='replace')
      try:
        value = float(text) if name == 'rating' else int(text)
      except ValueError:
        kind = 'a number' if name == 'rating' else 'an integer'
        return f'{path}:{number}: {name} {text!r} is not {kind}'
      if not -2**63 <= value < 2**63:
        return f'{path}:{number}: {name} {text!r} is out of range'
  return f'{path}: cannot be parsed'


def read_raw(path: str, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Users, items and timestamps (int64, file order) of a raw MovieLens ratings file."""
  if fmt not in FORMATS:
    raise DataError(f'{path}: unknown format {fmt!r}; known: {", ".join(FORMATS)}')
  spec = FORMATS[fmt]
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found')
  with open(path, 'rb') as f:
    data = f.read()
  if b'\r' in data:
    data = data.replace(b'\r\n', b'\n')
  # Offsets instead of slices: ML-20M's file is 0.5 GB, each copy costs.
  start, first_line = 0, 1
  if spec.header is not None:
    start = data.find(b'\n') + 1 or len(data)
    header = data[:start].strip()
    if header != spec.header:
      raise DataError(f'{path}:1: expected the header {spec.header.decode()!r}, found '
                      f'{header[:80].decode("utf-8", errors="replace")!r}')
    first_line = 2
  end = len(data)
  while end > start and data[end - 1] == ord('\n'):  # final newlines are fine
    end -= 1
  if end == start:
    raise DataError(f'{path}: no ratings')
  # NumPy skips blank lines, which would shift the line numbers of errors.
  if data.startswith(b'\n', start):
    blank = start
  else:
    blank = data.find(b'\n\n', start, end)
    blank = blank + 1 if blank >= 0 else -1
  if blank >= 0:
    number = first_line + data.count(b'\n', start, blank)
    raise DataError(f'{path}:{number}: empty line')
  body, delimiter = data, spec.delimiter
  if len(delimiter) > 1:  # NumPy's reader takes one character; ML-1M has no tabs
    if b'\t' in body:
      raise DataError(_first_bad_line(path, data, start, spec, first_line))
    body, delimiter = body.replace(delimiter, b'\t'), b'\t'
  try:
    table = np.loadtxt(io.BytesIO(body), dtype=_ROW, delimiter=delimiter.decode(),
                       skiprows=first_line - 1, comments=None, ndmin=1)
  except ValueError:  # also rows with too few or too many fields
    raise DataError(_first_bad_line(path, data, start, spec, first_line)) from None
  for name in ('user', 'item'):
    negative = table[name] < 0
    if negative.any():
      row = int(np.argmax(negative))
      raise DataError(f'{path}:{first_line + row}: {name} id {table[name][row]} is negative')
  bad = ~np.isfinite(table['rating'])
  if bad.any():
    row = int(np.argmax(bad))
    raise DataError(f'{path}:{first_line + row}: rating {table["rating"][row]} is not finite')
  return table['user'], table['item'], table['timestamp']


def _ids_by_first_appearance(values: np.ndarray, first: np.ndarray) -> np.ndarray:
  """Contiguous ids for `values`, numbered by each value's smallest `first` (a file row)."""
  labels = values
  if int(values.max()) >= 4 * len(values) + 2**20:  # sparse ids: a lookup table would be big
    labels = np.unique(values, return_inverse=True)[1].ravel()
  never = np.iinfo(np.int64).max
  first_of = np.full(int(labels.max()) + 1, never)
  np.minimum.at(first_of, labels, first)
  present = np.flatnonzero(first_of != never)
  rank = np.zeros(len(first_of), dtype=np.int64)
  rank[present[np.argsort(first_of[present])]] = np.arange(len(present))
  return rank[labels]


def implicit_interactions(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray,
                          min_interactions: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
  """Deduplicated pairs of users with enough items, with contiguous ids.

  Returns users, items (int32), timestamps (int64), num_users, num_items. Rows
  are sorted by (raw user, raw item); ids follow first appearance in the file.
  """
  if int(users.max()) * (int(items.max()) + 1) >= 2**62:  # keys would overflow: compact first
    users = np.unique(users, return_inverse=True)[1].ravel()
    items = np.unique(items, return_inverse=True)[1].ravel()
  keys = users * (int(items.max()) + 1) + items
  order = np.argsort(keys, kind='stable')  # stable: a pair's first row comes first
  sorted_keys = keys[order]
  starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
  first = order[starts]  # the file row where each pair first appears
  pair_users, pair_items = users[first], items[first]
  pair_times = np.minimum.reduceat(timestamps[order], starts)

  # Pairs are sorted by user, so each user's pairs are one run.
  runs = np.flatnonzero(np.concatenate([[True], pair_users[1:] != pair_users[:-1], [True]]))
  counts = np.diff(runs)
  keep = np.repeat(counts >= min_interactions, counts)
  if not keep.any():
    return (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), 0, 0)
  pair_users, pair_items = pair_users[keep], pair_items[keep]
  pair_times, first = pair_times[keep], first[keep]
  new_users = _ids_by_first_appearance(pair_users, first).astype(np.int32)
  new_items = _ids_by_first_appearance(pair_items, first).astype(np.int32)
  return (new_users, new_items, pair_times, int(new_users.max()) + 1, int(new_items.max()) + 1)


def _holdout(rng, users, items, timestamps, num_users, num_items, remaining, seen):
  """Each user's latest remaining interaction, with distinct unseen negatives."""
  rows = np.flatnonzero(remaining)
  last = rows[latest_per_user(users[rows], timestamps[rows], num_users, rng)]
  negatives = sample_distinct_negatives(rng, users[last], seen, num_items, NUM_NEGATIVES)
  return last, HeldOut(users[last], items[last], negatives)


def prepare(raw_path: str, fmt: str, out_dir: str, name: str | None = None, seed: int = 0,
            validation: bool = False, min_interactions: int = 20) -> Dataset:
  """Turns a raw MovieLens ratings file into NCF files in `out_dir`; returns the Dataset.

  `fmt`: 'ml-100k' (u.data), 'ml-1m' (ratings.dat) or 'ml-20m' (ratings.csv).
  `name` (default: `fmt`) names the files `<name>.train.rating` etc.
  """
  if min_interactions < 2 + validation:
    raise ValueError(f'min_interactions={min_interactions}: every user needs a test item'
                     f'{", a validation item" if validation else ""} and a training item')
  name = name or fmt
  users, items, timestamps, num_users, num_items = implicit_interactions(
      *read_raw(raw_path, fmt), min_interactions)
  if num_users == 0:
    raise DataError(f'{raw_path}: no user has {min_interactions} or more distinct items')
  counts = np.bincount(users, minlength=num_users)
  short = num_items - counts < NUM_NEGATIVES
  if short.any():
    user = int(np.argmax(short))
    raise DataError(f'{raw_path}: user {user} (new id) interacted with {counts[user]} of '
                    f'{num_items} items, leaving fewer than {NUM_NEGATIVES} to draw negatives from')

  rng = np.random.default_rng([seed, 0x9E9])
  seen = InteractionSet(users, items, num_users, num_items)
  remaining = np.ones(len(users), dtype=bool)
  test_rows, test = _holdout(rng, users, items, timestamps, num_users, num_items, remaining, seen)
  remaining[test_rows] = False
  valid = None
  if validation:  # after the test draws, so that the test split is the same either way
    valid_rows, valid = _holdout(rng, users, items, timestamps, num_users, num_items, remaining,
                                 seen)
    remaining[valid_rows] = False

  train = np.flatnonzero(remaining)
  train = train[np.argsort(users[train].astype(np.int64) * num_items + items[train])]
  dataset = Dataset(name=name, num_users=num_users, num_items=num_items,
                    train_users=users[train], train_items=items[train],
                    train_timestamps=timestamps[train], test=test, valid=valid)
  for suffix in ('valid.rating', 'valid.negative'):  # stale ones from an earlier run
    stale = os.path.join(out_dir, f'{name}.{suffix}')
    if not validation and os.path.exists(stale):
      os.remove(stale)
  write_ncf_dir(dataset, out_dir)
  return dataset
