"""What a prepared directory says about its origin: id maps and the manifest.

`data prepare` writes, beside the NCF files:
- `users.tsv`, `items.tsv`: line i holds the original id of user (item) i;
- `dataset.json`: the source file (name, size, SHA-256), the parameters, the
  counts before and after filtering, and whether the held-out item is each
  user's latest interaction or a random one.

NCF files from elsewhere (the paper's, synthetic data) have neither: the
readers here then return None and callers show internal indices.
"""

import csv
import dataclasses
import functools
import io
import json
import os

from ncf_jax.data.delimited import column_index, read_text
from ncf_jax.data.files import one_line
from ncf_jax.errors import DataError

USERS = 'users.tsv'
ITEMS = 'items.tsv'
MANIFEST = 'dataset.json'


@dataclasses.dataclass(frozen=True)
class IdMaps:
  """Original ids by index: `users[u]` is the file's id of user index u."""
  users: tuple[str, ...]
  items: tuple[str, ...]

  def __iter__(self):  # `user_ids, item_ids = read_id_maps(directory)`
    return iter((self.users, self.items))

  @functools.cached_property
  def _user_index(self) -> dict[str, int]:
    return {original: index for index, original in enumerate(self.users)}

  @functools.cached_property
  def _item_index(self) -> dict[str, int]:
    return {original: index for index, original in enumerate(self.items)}

  def user_index(self, original: str) -> int:
    """The index of a user given by original id; DataError if there is none."""
    if original not in self._user_index:
      raise DataError(f'user {original!r}: not in the dataset\'s {USERS} '
                      '(users with too few interactions are dropped by data prepare)')
    return self._user_index[original]

  def item_index(self, original: str) -> int:
    """The index of an item given by original id; DataError if there is none."""
    if original not in self._item_index:
      raise DataError(f'item {original!r}: not in the dataset\'s {ITEMS}')
    return self._item_index[original]


def _id_lines(ids) -> str:
  return ''.join(f'{original}\n' for original in ids)


def stage_id_maps(staged, maps: IdMaps) -> None:
  """Adds `users.tsv` and `items.tsv` to a `files.StagedFiles` (ids hold no tab or newline)."""
  staged.add_text(USERS, _id_lines(maps.users))
  staged.add_text(ITEMS, _id_lines(maps.items))


def _read_lines(path: str) -> tuple[str, ...]:
  try:
    with open(path, encoding='utf-8', newline='') as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'{path}: cannot read ({one_line(e)})') from None
  if text and not text.endswith('\n'):
    raise DataError(f'{path}:{text.count(chr(10)) + 1}: last line has no newline (truncated?)')
  return tuple(text.split('\n')[:-1])


def read_id_maps(directory: str) -> IdMaps | None:
  """The id maps of a prepared directory, or None when it has none (not prepared here)."""
  paths = [os.path.join(directory, name) for name in (USERS, ITEMS)]
  present = [os.path.exists(path) for path in paths]
  if not any(present):
    return None
  if not all(present):
    missing = paths[present.index(False)]
    raise DataError(f'{missing}: missing, but {paths[present.index(True)]} is there')
  return IdMaps(*(_read_lines(path) for path in paths))


def id_maps_for(dataset) -> IdMaps | None:
  """The id maps of the directory a `Dataset` was loaded from, checked against its size.

  None for datasets without maps (synthetic data, NCF files prepared elsewhere).
  """
  if getattr(dataset, 'source_dir', None) is None:
    return None
  maps = read_id_maps(dataset.source_dir)
  if maps is None:
    return None
  for kind, ids, count in (('users', maps.users, dataset.num_users),
                           ('items', maps.items, dataset.num_items)):
    if len(ids) != count:
      path = os.path.join(dataset.source_dir, USERS if kind == 'users' else ITEMS)
      raise DataError(f'{path}: {len(ids)} lines, but the dataset has {count} {kind} '
                      '(prepared again without its maps?)')
  return maps


def read_manifest(directory: str) -> dict | None:
  """The manifest `dataset.json` of a prepared directory, or None when there is none."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot read ({one_line(e)})') from None


def read_item_metadata(path: str, id_col: str, title_col: str,
                       encoding: str = 'utf-8') -> dict[str, str]:
  """Original item id -> title from a CSV with a header row (e.g. MovieLens `movies.csv`).

  RFC 4180 quoting, plain or gzip; the first row of an id wins. DataError names
  file:line for a missing column or a short row.
  """
  reader = csv.reader(io.StringIO(read_text(path, encoding), newline=''))
  try:
    header = next(reader, None)
    if not header:
      raise DataError(f'{path}: empty file')
    columns = [column_index(path, header, name) for name in (id_col, title_col)]
    titles = {}
    for fields in reader:
      if len(fields) <= max(columns):
        raise DataError(f'{path}:{reader.line_num}: expected {len(header)} fields, found '
                        f'{len(fields)}')
      titles.setdefault(fields[columns[0]], fields[columns[1]])
  except csv.Error as e:
    raise DataError(f'{path}:{reader.line_num}: {one_line(e)}') from None
  return titles
