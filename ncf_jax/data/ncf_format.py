"""Reading and writing the NCF file format (He et al.'s `Data/` folder).

- `<name>.train.rating`, `<name>.test.rating` (and our optional `<name>.valid.rating`):
  one line per interaction, `user\\titem\\trating\\ttimestamp`, ids from 0.
- `<name>.test.negative` (and `<name>.valid.negative`): one line per `.rating` line,
  `(user,item)` followed by tab-separated negative items.
- `<name>.test.negative.npy` (ours, for many negatives per row): the negative
  items alone, an int32 (rows, N) array whose row j belongs to line j of the
  `.rating` file. Readers prefer it to the text file when both exist.

Parsing runs in NumPy's C reader; only when that fails does a line-by-line pass
find the first bad line, so that every error names the file, the line and the
problem.
"""

import io
import os

import numpy as np

from ncf_jax.data.files import atomic_write_text, one_line
from ncf_jax.errors import DataError

RATING_COLUMNS = 4
NPY = '.npy'  # suffix of a binary negatives file: `<name>.test.negative.npy`


def _read_text(path: str) -> str:
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found')
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      text = f.read()
  except OSError as e:
    raise DataError(f'{path}: cannot read ({one_line(e)})') from None
  if not text.strip():
    raise DataError(f'{path}: empty file')
  return text


def _first_bad_line(path: str, text: str, num_columns: int | None, pair: bool) -> str:
  """Names the first line that the fast reader cannot accept (slow; errors only)."""
  expected = num_columns
  for number, line in enumerate(text.split('\n'), start=1):
    if not line and number == text.count('\n') + 1:
      break  # the file's final newline
    fields = line.rstrip('\r').split('\t')
    if pair:
      head = fields[0]
      if not (head.startswith('(') and head.endswith(')') and head.count(',') == 1):
        return f'{path}:{number}: first column {head!r} is not "(user,item)"'
      fields = head[1:-1].split(',') + fields[1:]
    if expected is None:
      expected = len(fields)
    if len(fields) != expected and pair:
      return (f'{path}:{number}: expected {expected - 2} negative items after "(user,item)", '
              f'found {len(fields) - 2}')
    if len(fields) != expected:
      return f'{path}:{number}: expected {expected} tab-separated columns, found {len(fields)}'
    for column, field in enumerate(fields, start=1):
      try:
        float(field)
      except ValueError:
        return f'{path}:{number}: column {column} is not a number: {field!r}'
  return f'{path}: cannot be parsed'


def _parse(path: str, text: str, num_columns: int | None, pair: bool = False) -> np.ndarray:
  """All fields of a tab-separated numeric file as an int64 or float64 (lines, columns) array."""
  if '\n\n' in text.rstrip('\n') or text.startswith('\n'):
    number = 1 if text.startswith('\n') else text.rstrip('\n').index('\n\n') + 1
    number = text[:number].count('\n') + 1
    raise DataError(f'{path}:{number}: empty line')
  body = text
  if pair:
    lines = text.count('\n') + (not text.endswith('\n'))
    if not (text.count('(') == text.count(')') == text.count(',') == lines):
      raise DataError(_first_bad_line(path, text, num_columns, pair))
    body = text.replace('(', '').replace(')', '').replace(',', '\t')
  table = None
  for dtype in (np.int64, np.float64):  # integers parse 5x faster; ratings may be 3.5
    try:
      table = np.loadtxt(io.StringIO(body), dtype=dtype, delimiter='\t', ndmin=2)
      break
    except ValueError:
      pass
  if table is None:
    raise DataError(_first_bad_line(path, text, num_columns, pair))
  if num_columns is not None and table.shape[1] != num_columns:
    raise DataError(f'{path}:1: expected {num_columns} tab-separated columns, '
                    f'found {table.shape[1]}')
  return table


def _ids(path: str, table: np.ndarray, column: int, what: str) -> np.ndarray:
  """Column `column` as int32 ids, checked to be integers >= 0 below 2**31."""
  values = table[:, column]
  bad = (values < 0) | (values != np.floor(values))
  if bad.any():
    line = int(np.argmax(bad)) + 1
    raise DataError(f'{path}:{line}: {what} id {values[line - 1]:g} is not an integer >= 0')
  large = values >= 2**31
  if large.any():
    line = int(np.argmax(large)) + 1
    raise DataError(f'{path}:{line}: {what} id {values[line - 1]:.0f} is too large (ids must '
                    'be below 2**31; renumber them with `python -m ncf_jax.data prepare`)')
  return values.astype(np.int32)


def read_ratings(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads a `.rating` file: int32 users, int32 items, int64 timestamps."""
  table = _parse(path, _read_text(path), RATING_COLUMNS)
  users = _ids(path, table, 0, 'user')
  items = _ids(path, table, 1, 'item')
  return users, items, table[:, 3].astype(np.int64)


def read_negatives_npy(path: str, num_rows: int) -> np.ndarray:
  """Reads a `.negative.npy` file: int32 (num_rows, N) negatives, N >= 1, ids >= 0."""
  try:
    negatives = np.load(path, allow_pickle=False)
  except OSError as e:
    raise DataError(f'{path}: cannot read ({one_line(e)})') from None
  except ValueError as e:
    raise DataError(f'{path}: not a NumPy .npy array ({one_line(e)})') from None
  if negatives.dtype != np.int32 or negatives.ndim != 2 or negatives.shape[0] != num_rows or (
      negatives.shape[1] < 1):
    raise DataError(f'{path}: expected an int32 array of shape ({num_rows}, N) with N >= 1 '
                    f'(one row per held-out line), found {negatives.dtype} {negatives.shape}')
  if negatives.min() < 0:
    row = int(np.argmax(negatives.min(axis=1) < 0))
    raise DataError(f'{path}: row {row} (line {row + 1} of the .rating file) holds a negative '
                    'id')
  return negatives


def write_negatives_npy(f, negatives: np.ndarray) -> None:
  """Writes negatives to an open binary file as an int32 .npy array."""
  np.save(f, np.ascontiguousarray(negatives, dtype=np.int32), allow_pickle=False)


def read_negatives(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads a `.negative` file: int32 users, int32 held-out items, int32 (rows, N) negatives."""
  table = _parse(path, _read_text(path), None, pair=True)
  if table.shape[1] < 3:
    raise DataError(f'{path}:1: a row needs "(user,item)" and at least one negative item')
  users = _ids(path, table, 0, 'user')
  items = _ids(path, table, 1, 'item')
  negatives = np.stack([_ids(path, table, c, 'negative item') for c in range(2, table.shape[1])],
                       axis=1)
  return users, items, negatives


_CHUNK_CELLS = 1 << 20  # bounds the int64 digit buffers to ~100 MiB per chunk


def _as_counts(values: np.ndarray) -> np.ndarray | None:
  """`values` as int64 when all are integers in [0, 2**53), else None."""
  values = np.asarray(values)
  if values.dtype.kind == 'b' or values.size == 0:
    return values.astype(np.int64)
  if values.dtype.kind not in 'iuf':
    return None
  if values.dtype.kind == 'f' and not np.array_equal(values, np.floor(values)):
    return None
  if values.min() < 0 or values.max() >= 2**53:
    return None
  return values.astype(np.int64, copy=False)


# ASCII of "00".."99": two digits per division halves the integer divisions.
_DIGIT_PAIRS = np.array([[ord(a), ord(b)] for a in '0123456789' for b in '0123456789'],
                        dtype=np.uint8)


def _digits(values: np.ndarray, width: int) -> np.ndarray:
  """(R, width) ASCII digits of `values` >= 0, right-aligned, NUL for leading zeros."""
  dtype = np.int32 if width <= 9 else np.int64  # int32 division is faster
  values = values.astype(dtype)[:, None]
  pairs = (width + 1) // 2
  hundreds = 100 ** np.arange(pairs - 1, -1, -1, dtype=dtype)
  chars = _DIGIT_PAIRS[values // hundreds % 100].reshape(len(values), 2 * pairs)
  chars = chars[:, 2 * pairs - width:]
  tens = 10 ** np.arange(width - 1, -1, -1, dtype=dtype)
  return np.where((values < tens) & (tens > 1), np.uint8(0), chars)  # a 0 keeps its digit


def format_int_rows(table: np.ndarray, prefix: bytes, separators: list[bytes]) -> str:
  """Rows of non-negative integers as text, built as digit arrays (no per-row Python).

  Each row is `prefix`, then column c's digits followed by `separators[c]`.
  Cells are laid out at a fixed width per column with NUL padding, then dropped.
  """
  num_rows, num_columns = table.shape
  if num_rows == 0:
    return ''
  widths = [len(str(int(largest))) for largest in table.max(axis=0)]
  constant = lambda text, rows: np.broadcast_to(np.frombuffer(text, np.uint8), (rows, len(text)))
  out = []
  step = max(1, _CHUNK_CELLS // num_columns)
  for start in range(0, num_rows, step):
    chunk = table[start:start + step]
    pieces = [constant(prefix, len(chunk))]
    for column, (width, separator) in enumerate(zip(widths, separators)):
      pieces += [_digits(chunk[:, column], width), constant(separator, len(chunk))]
    lines = np.concatenate(pieces, axis=1).ravel()
    out.append(lines[lines != 0].tobytes().decode('ascii'))
  return ''.join(out)


def _format_rows(columns: list[np.ndarray]) -> str:
  counts = [_as_counts(c) for c in columns]
  if all(c is not None for c in counts):  # ids, timestamps: the fast common case
    table = np.stack(counts, axis=1)
    return format_int_rows(table, b'', [b'\t'] * (len(columns) - 1) + [b'\n'])
  table = np.stack([np.asarray(c, dtype=np.float64) for c in columns], axis=1)
  out = io.StringIO()
  np.savetxt(out, table, fmt='%.15g', delimiter='\t')
  return out.getvalue()


def ratings_text(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None = None,
                 ratings: np.ndarray | None = None) -> str:
  """A `.rating` file's text (rating 1 and timestamp 0 where not given)."""
  ones = np.ones_like(users, dtype=np.int64)
  ratings = ones if ratings is None else np.asarray(ratings)
  timestamps = 0 * ones if timestamps is None else timestamps
  return _format_rows([users, items, ratings, timestamps])


def negatives_text(users: np.ndarray, items: np.ndarray, negatives: np.ndarray) -> str:
  """A `.negative` file's text: `(user,item)` then the row's negatives."""
  table = np.concatenate([np.stack([users, items], axis=1), negatives], axis=1)
  counts = _as_counts(table)
  if counts is None:
    raise ValueError('write_negatives: ids must be integers >= 0')
  num_negatives = negatives.shape[1]
  return format_int_rows(counts, b'(', [b',', b')\t'] + [b'\t'] * (num_negatives - 1) + [b'\n'])


def write_negatives(path: str, users: np.ndarray, items: np.ndarray,
                    negatives: np.ndarray) -> None:
  """Writes a `.negative` file atomically: `(user,item)` then the row's negatives."""
  atomic_write_text(path, negatives_text(users, items, negatives))
