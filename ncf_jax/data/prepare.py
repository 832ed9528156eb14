"""An interaction log (CSV, TSV, MovieLens) -> NCF files, with the NCF paper's protocol.

Protocol (He et al. 2017, Section 4.1), as implemented here:
- every row is an implicit positive (with `min_rating`, only rows rated at
  least that); a (user, item) pair that occurs more than once counts once, at
  its earliest timestamp;
- users with fewer than `min_user_interactions` (20) distinct items are
  dropped, and counted in the manifest;
- ids are contiguous from 0: users and items numbered in order of first
  appearance in the file (among the rows that are kept); `users.tsv` and
  `items.tsv` map them back to the file's ids;
- each user's latest interaction is the test item; equal timestamps are broken
  by a seeded random draw (`dataset.latest_per_user`), never by id; without a
  time column every interaction ties, so the test item is a seeded random one;
- `test_negatives` (99) test negatives per user, uniform, distinct, seeded,
  from the items the user never interacted with;
- optionally a validation holdout: the latest remaining interaction per user,
  with its own negatives drawn the same way (written as `.valid.*`). The test
  split does not depend on whether a validation split is made.

The MovieLens formats are fixed layouts of the same path; for a given seed
they give the same files as the integer-id code they replaced.
"""

import dataclasses
import json
import os

import numpy as np

from ncf_jax.data import files, id_maps
from ncf_jax.data.dataset import (Dataset, HeldOut, latest_per_user, sample_distinct_negatives,
                                  stage_ncf_files, stale_ncf_files)
from ncf_jax.data.delimited import ColumnLayout, RawColumns, read_columns, sort_keys
from ncf_jax.data.interactions import InteractionSet
from ncf_jax.errors import DataError

NUM_NEGATIVES = 99  # the paper's test negatives per user


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The knobs of the leave-one-out protocol; the defaults are the paper's.

  `preset` names the preset these values came from (manifests only).
  """
  min_user_interactions: int = 20
  test_negatives: int = NUM_NEGATIVES
  validation: bool = False
  seed: int = 0
  min_rating: float | None = None
  preset: str | None = None

  def check(self) -> None:
    """DataError naming the flag whose value cannot work."""
    least = 3 if self.validation else 2
    if self.min_user_interactions < least:
      why = 'a test, a validation and a training item' if self.validation else (
          'a test and a training item')
      raise DataError(f'--min_user_interactions={self.min_user_interactions}: each user needs '
                      f'{why}, so at least {least}')
    if self.test_negatives < 1:
      raise DataError(f'--test_negatives={self.test_negatives}: must be at least 1')
    if self.min_rating is not None and not np.isfinite(self.min_rating):
      raise DataError(f'--min_rating={self.min_rating}: must be a finite number')


PRESETS = {
    'paper': Protocol(preset='paper'),
    # MLPerf v0.5 recommendation (NCF on ML-20M): every rating is a positive, users
    # with at least 20 ratings, each user's latest held out, 999 test negatives.
    'mlperf': Protocol(min_user_interactions=20, test_negatives=999, preset='mlperf'),
}

MOVIELENS = {
    # u.data: user item rating timestamp
    'ml-100k': ColumnLayout('ml-100k', '\t', 0, 1, time=3, rating=2, header=False, num_columns=4,
                      integer_ids=True),
    # ratings.dat: UserID::MovieID::Rating::Timestamp
    'ml-1m': ColumnLayout('ml-1m', '::', 0, 1, time=3, rating=2, header=False, num_columns=4,
                    integer_ids=True),
    # ratings.csv: userId,movieId,rating,timestamp (half stars)
    'ml-20m': ColumnLayout('ml-20m', ',', 'userId', 'movieId', time='timestamp', rating='rating',
                     integer_ids=True),
}
FORMATS = (*MOVIELENS, 'csv', 'tsv')
NEGATIVES_FORMATS = ('auto', 'text', 'npy')
_TEXT_NEGATIVES_MAX = 100  # 'auto' stores more negatives per row as .npy


def layout_for(fmt: str, user_col: str | None = None, item_col: str | None = None,
               time_col: str | None = None, rating_col: str | None = None,
               sep: str | None = None, encoding: str = 'utf-8') -> ColumnLayout:
  """The layout of a format: a MovieLens preset, or a csv/tsv file's named columns."""
  if fmt in MOVIELENS:
    given = [flag for flag, value in (('user_col', user_col), ('item_col', item_col),
                                      ('time_col', time_col), ('rating_col', rating_col),
                                      ('sep', sep)) if value is not None]
    if given:
      raise DataError(f'--{given[0]}: --format={fmt} has fixed columns; use --format=csv '
                      'or --format=tsv to name them')
    return dataclasses.replace(MOVIELENS[fmt], encoding=encoding)
  if fmt not in ('csv', 'tsv'):
    raise DataError(f'--format={fmt}: unknown format; known: {", ".join(FORMATS)}')
  for flag, value in (('user_col', user_col), ('item_col', item_col)):
    if not value:
      raise DataError(f'--format={fmt} needs --{flag}')
  named = [c for c in (user_col, item_col, time_col, rating_col) if c is not None]
  if len(set(named)) != len(named):
    raise DataError('--user_col/--item_col/--time_col/--rating_col name one column twice')
  sep = {'csv': ',', 'tsv': '\t'}[fmt] if sep is None else sep
  if len(sep) != 1 or sep in '"\r\n':
    raise DataError(f'--sep={sep!r}: must be one character, not a quote or a line break')
  return ColumnLayout(fmt, sep, user_col, item_col, time=time_col, rating=rating_col,
                encoding=encoding)


@dataclasses.dataclass(frozen=True)
class Interactions:
  """Distinct (user, item) pairs of the kept users, with contiguous ids.

  Rows are sorted by the file's ids (numerically when they are integers); new
  ids follow first appearance in the file. `user_codes[u]` is the code of new
  user u in `RawColumns.users` (likewise items). `counts` feeds the manifest.
  """
  users: np.ndarray  # (P,) int32
  items: np.ndarray  # (P,) int32
  timestamps: np.ndarray  # (P,) int64
  user_codes: np.ndarray  # (num_users,) int64
  item_codes: np.ndarray  # (num_items,) int64
  counts: dict

  @property
  def num_users(self) -> int:
    return len(self.user_codes)

  @property
  def num_items(self) -> int:
    return len(self.item_codes)


def _ids_by_first_appearance(codes: np.ndarray, first: np.ndarray, num_codes: int
                             ) -> tuple[np.ndarray, np.ndarray]:
  """Contiguous ids for `codes`, numbered by each code's smallest `first` (a file row).

  Returns the new id of each entry and, per new id, its code.
  """
  never = np.iinfo(np.int64).max
  first_of = np.full(num_codes, never)
  np.minimum.at(first_of, codes, first)
  present = np.flatnonzero(first_of != never)
  by_appearance = present[np.argsort(first_of[present])]
  rank = np.zeros(num_codes, dtype=np.int64)
  rank[by_appearance] = np.arange(len(present))
  return rank[codes].astype(np.int32), by_appearance


def implicit_interactions(raw: RawColumns, min_user_interactions: int,
                          min_rating: float | None = None) -> Interactions:
  """Deduplicated pairs (at their earliest time) of users with enough distinct items."""
  rows = np.arange(raw.num_rows)
  if min_rating is not None:
    rows = np.flatnonzero(raw.ratings >= min_rating)
  user_codes, item_codes = raw.users.codes[rows], raw.items.codes[rows]
  timestamps = (raw.timestamps[rows] if raw.timestamps is not None
                else np.zeros(len(rows), dtype=np.int64))
  num_item_codes = len(raw.items.values)
  keys = (sort_keys(raw.users.values)[user_codes] * num_item_codes
          + sort_keys(raw.items.values)[item_codes])
  order = np.argsort(keys, kind='stable')  # stable: a pair's first row comes first
  sorted_keys = keys[order]
  del keys
  starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
  del sorted_keys
  first = rows[order[starts]]  # the file row where each pair first appears
  pair_users, pair_items = raw.users.codes[first], raw.items.codes[first]
  pair_times = np.minimum.reduceat(timestamps[order], starts) if len(starts) else timestamps

  # Pairs are sorted by user, so each user's pairs are one run.
  runs = np.flatnonzero(np.concatenate([[True], pair_users[1:] != pair_users[:-1], [True]]))
  per_user = np.diff(runs)
  keep = np.repeat(per_user >= min_user_interactions, per_user)
  counts = _counts(raw, len(rows), len(first), int(keep.sum()), per_user, min_user_interactions)
  new_users, user_of = _ids_by_first_appearance(pair_users[keep], first[keep],
                                                len(raw.users.values))
  new_items, item_of = _ids_by_first_appearance(pair_items[keep], first[keep], num_item_codes)
  counts['after'] = dict(users=len(user_of), items=len(item_of), interactions=len(new_users))
  return Interactions(new_users, new_items, pair_times[keep], user_of, item_of, counts)


def _counts(raw: RawColumns, rated: int, pairs: int, kept: int, per_user: np.ndarray,
            min_user_interactions: int) -> dict:
  """Rows, users and items before filtering, and what was dropped, by reason."""
  users_rated = len(per_user)
  short = int((per_user < min_user_interactions).sum())
  return dict(
      before=dict(rows=raw.num_rows, users=len(raw.users.values), items=len(raw.items.values)),
      dropped_rows={'rating_below_min_rating': raw.num_rows - rated,
                    'duplicate_pair': rated - pairs,
                    'user_below_min_user_interactions': pairs - kept},
      dropped_users={'no_rating_at_least_min_rating': len(raw.users.values) - users_rated,
                     'below_min_user_interactions': short})


def _check_enough_negatives(raw: RawColumns, data: Interactions, test_negatives: int) -> None:
  """DataError naming a user (original id, first line) with too few items left to sample."""
  per_user = np.bincount(data.users, minlength=data.num_users)
  short = data.num_items - per_user < test_negatives
  if short.any():
    user = int(np.argmax(short))
    code = data.user_codes[user]
    line = raw.line(raw.users.first_rows[code])
    raise DataError(f'{raw.path}:{line}: user {raw.users.values[code]!r} interacted with '
                    f'{per_user[user]} of the {data.num_items} items, leaving fewer than '
                    f'--test_negatives={test_negatives} to draw negatives from')


def _holdout(rng, data: Interactions, remaining, seen, num_negatives):
  """Each user's latest remaining interaction, with distinct unseen negatives."""
  users, items = data.users, data.items
  rows = np.flatnonzero(remaining)
  last = rows[latest_per_user(users[rows], data.timestamps[rows], data.num_users, rng)]
  negatives = sample_distinct_negatives(rng, users[last], seen, data.num_items, num_negatives)
  return last, HeldOut(users[last], items[last], negatives)


def split(data: Interactions, protocol: Protocol, name: str, source_dir: str | None = None
          ) -> Dataset:
  """The leave-one-out split of `data`: test (and validation) holdouts with negatives."""
  rng = np.random.default_rng([protocol.seed, 0x9E9])
  users, items = data.users, data.items
  seen = InteractionSet(users, items, data.num_users, data.num_items)
  remaining = np.ones(len(users), dtype=bool)
  test_rows, test = _holdout(rng, data, remaining, seen, protocol.test_negatives)
  remaining[test_rows] = False
  valid = None
  if protocol.validation:  # after the test draws, so that the test split is the same either way
    valid_rows, valid = _holdout(rng, data, remaining, seen, protocol.test_negatives)
    remaining[valid_rows] = False
  train = np.flatnonzero(remaining)
  train = train[np.argsort(users[train].astype(np.int64) * data.num_items + items[train])]
  return Dataset(name=name, num_users=data.num_users, num_items=data.num_items,
                 train_users=users[train], train_items=items[train],
                 train_timestamps=data.timestamps[train], test=test, valid=valid,
                 source_dir=source_dir)


def _manifest(raw: RawColumns, layout: ColumnLayout, protocol: Protocol, data: Interactions,
              dataset: Dataset, negatives_format: str) -> dict:
  return {
      'source': dict(file=os.path.basename(raw.path), size=raw.size, sha256=raw.sha256),
      'name': dataset.name,
      'parameters': dict(dataclasses.asdict(layout), **dataclasses.asdict(protocol),
                         negatives_format=negatives_format),
      'heldout': 'latest' if raw.timestamps is not None else 'random',
      **data.counts,
      'split': dict(train=dataset.num_train, test=len(dataset.test),
                    valid=0 if dataset.valid is None else len(dataset.valid)),
  }


def default_name(raw_path: str, layout: ColumnLayout) -> str:
  """The files' stem: a MovieLens format's name, else the raw file's (orders.csv.gz: orders)."""
  if layout.format in MOVIELENS:
    return layout.format
  base = os.path.basename(raw_path)
  base = base[:-len('.gz')] if base.endswith('.gz') else base
  return os.path.splitext(base)[0] or layout.format


def prepare(raw_path: str, layout: ColumnLayout | str, out_dir: str, name: str | None = None,
            protocol: Protocol = Protocol(), negatives_format: str = 'auto') -> Dataset:
  """Turns an interaction log into NCF files, id maps and a manifest in `out_dir`.

  `layout`: a `ColumnLayout`, or the name of a MovieLens format ('ml-100k' for
  u.data, 'ml-1m' for ratings.dat, 'ml-20m' for ratings.csv). `name` names the
  files `<name>.train.rating` etc. (default: see `default_name`). `negatives_format`:
  'text' (`.negative`), 'npy' (`.negative.npy`, int32) or 'auto' (text up to
  100 negatives per row). Returns the Dataset as written.
  """
  layout = layout_for(layout) if isinstance(layout, str) else layout
  protocol.check()
  if negatives_format not in NEGATIVES_FORMATS:
    raise DataError(f'--negatives_format={negatives_format}: expected one of '
                    f'{", ".join(NEGATIVES_FORMATS)}')
  if protocol.min_rating is not None and layout.rating is None:
    raise DataError('--min_rating needs --rating_col')
  files.check_output_dir(out_dir)
  name = name or default_name(raw_path, layout)
  raw = read_columns(raw_path, layout)
  data = implicit_interactions(raw, protocol.min_user_interactions, protocol.min_rating)
  if data.num_users == 0:
    raise DataError(f'{raw_path}: no user has {protocol.min_user_interactions} or more '
                    'distinct items (see --min_user_interactions)')
  _check_enough_negatives(raw, data, protocol.test_negatives)
  dataset = split(data, protocol, name, source_dir=os.path.abspath(out_dir))
  if negatives_format == 'auto':
    negatives_format = 'text' if protocol.test_negatives <= _TEXT_NEGATIVES_MAX else 'npy'
  manifest = _manifest(raw, layout, protocol, data, dataset, negatives_format)
  maps = id_maps.IdMaps(tuple(raw.users.values[c] for c in data.user_codes),
                        tuple(raw.items.values[c] for c in data.item_codes))
  _write(dataset, out_dir, negatives_format, maps, manifest)
  return dataset


def _write(dataset: Dataset, out_dir: str, negatives_format: str, maps: id_maps.IdMaps,
           manifest: dict) -> None:
  """All files at once (nothing half-written), then the stale ones of an earlier run go."""
  try:
    with files.StagedFiles(out_dir) as staged:
      written = stage_ncf_files(staged, dataset, negatives_format)
      id_maps.stage_id_maps(staged, maps)
      staged.add_text(id_maps.MANIFEST, json.dumps(dict(manifest, files=written), indent=2)
                      + '\n')
      staged.commit()
    for path in stale_ncf_files(out_dir, dataset.name, written):
      os.remove(path)
  except OSError as e:
    raise DataError(f'{e.filename or out_dir}: cannot write ({files.one_line(e)})') from None
