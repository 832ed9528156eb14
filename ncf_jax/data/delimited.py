"""Reading the columns `prepare` needs from a delimited text file (CSV, TSV, MovieLens).

A file without any quote character is split with NumPy on its bytes, block by
block: one vectorised pass finds separators and newlines, checks that every
line has the same number of fields, and turns each needed field into numbers
(timestamps) or into a pair of 64-bit hashes (ids, ratings) that are then
factorised with one sort. Only the distinct values are ever made into Python
strings. A file with quote characters goes through Python's `csv` module
(RFC 4180 quoting, fields spanning lines), which is exact but several times
slower. Both paths give the same `RawColumns`.

Ids are strings, compared byte for byte; they are numbered by first
appearance in the file.
"""

import codecs
import csv
import dataclasses
import gzip
import hashlib
import io
import zlib

import numpy as np

from ncf_jax.data.files import one_line
from ncf_jax.errors import DataError

_BLOCK_BYTES = 1 << 26  # the fast path's unit of work: bounds its temporary arrays
_CHUNK_CELLS = 1 << 24  # bytes gathered at once when hashing or parsing fields
_NEWLINE = ord('\n')
_MAX_DIGITS = 18  # an integer of up to 18 digits fits in int64
# Codecs in which a byte below 0x80 is always that ASCII character: the fast
# path splits their bytes directly. Others are decoded and re-encoded as UTF-8.
_ASCII_SAFE_CODECS = ('utf-8', 'utf-8-sig', 'ascii', 'latin-1', 'iso8859', 'cp125', 'mac-roman')


@dataclasses.dataclass(frozen=True)
class ColumnLayout:
  """Where a file's columns are, and how its fields are separated.

  With `header`, columns are header names; without, 0-based positions in
  lines of exactly `num_columns` fields. `integer_ids`: ids must be decimal
  integers (the MovieLens files). `format` names the layout in manifests.
  """
  format: str
  sep: str
  user: str | int
  item: str | int
  time: str | int | None = None
  rating: str | int | None = None
  header: bool = True
  num_columns: int | None = None
  integer_ids: bool = False
  encoding: str = 'utf-8'


@dataclasses.dataclass(frozen=True)
class Ids:
  """A column of string ids as codes: `values[codes[row]]` is the id in `row`."""
  codes: np.ndarray  # (rows,) int32, numbered by first appearance
  values: list[str]  # distinct ids, in order of first appearance
  first_rows: np.ndarray  # (len(values),) int64: the row where each id first appears


@dataclasses.dataclass(frozen=True)
class RawColumns:
  """The needed columns of a file's data rows, in file order."""
  path: str
  users: Ids
  items: Ids
  timestamps: np.ndarray | None  # (rows,) int64
  ratings: np.ndarray | None  # (rows,) float64
  first_line: int  # line number of row 0
  row_lines: np.ndarray | None  # line of each row, when records may span lines
  size: int  # bytes of the file as stored
  sha256: str  # of the file as stored

  @property
  def num_rows(self) -> int:
    return len(self.users.codes)

  def line(self, row: int) -> int:
    """Line number (from 1) where data row `row` starts."""
    if self.row_lines is not None:
      return int(self.row_lines[row])
    return self.first_line + int(row)


@dataclasses.dataclass(frozen=True)
class _Columns:
  """Positions of the needed columns in a line; names for messages."""
  path: str
  sep: str  # as the user gave it (messages)
  num_columns: int
  user: int
  item: int
  time: int | None
  rating: int | None

  def hashed(self) -> tuple[tuple[str, int], ...]:
    """Columns factorised as strings: ids, and ratings (few distinct values)."""
    out = (('user', self.user), ('item', self.item))
    return out + ((('rating', self.rating),) if self.rating is not None else ())


def read_columns(path: str, layout: ColumnLayout) -> RawColumns:
  """Reads the user, item (and time, rating) columns of a delimited file, plain or gzip."""
  stored, size, sha256 = _read_file(path)
  data = _decompress(path, stored)
  del stored
  data, encoding = _ascii_compatible(path, data, layout.encoding)
  if not data or data.isspace():  # isspace stops at the first other byte: no copy, no scan
    raise DataError(f'{path}: empty file')
  if b'\r' in data:
    data = data.replace(b'\r\n', b'\n')
  start, columns = _locate_columns(path, data, layout, encoding)
  end = len(data)
  while end > start and data[end - 1] == _NEWLINE:  # final newlines are fine
    end -= 1
  if end <= start:
    raise DataError(f'{path}: no data rows after the header')
  first_line = 1 + data.count(b'\n', 0, start)
  if len(columns.sep) == 1 and data.find(b'"', start, end) >= 0:
    parsed = _read_quoted(data[start:end].decode(encoding), columns, first_line)
    row_lines = parsed.pop('row_lines')
  else:
    if end == len(data):
      data += b'\n'  # every line, the last included, ends with a newline
    data, sep_byte = _one_byte_separator(data, columns)
    parsed = _read_unquoted(data, start, end + 1, columns, sep_byte, first_line, encoding)
    row_lines = None
  raw = RawColumns(path=path, users=parsed['user'], items=parsed['item'],
                   timestamps=parsed.get('time'), ratings=None, first_line=first_line,
                   row_lines=row_lines, size=size, sha256=sha256)
  if columns.rating is not None:
    raw = dataclasses.replace(raw, ratings=_ratings(raw, parsed['rating']))
  for what, ids in (('user', raw.users), ('item', raw.items)):
    _check_ids(raw, what, ids, layout.integer_ids)
  return raw


def read_text(path: str, encoding: str = 'utf-8') -> str:
  """A small text file's content, plain or gzip, without a byte-order mark; one-line errors."""
  stored, _, _ = _read_file(path)
  try:
    return _decompress(path, stored).decode(encoding).removeprefix('\ufeff')
  except (UnicodeDecodeError, LookupError) as e:
    raise DataError(f'{path}: not valid {encoding} ({one_line(e)})') from None


def _read_file(path: str) -> tuple[bytes, int, str]:
  """The file's bytes, size and SHA-256; one-line errors for what the OS refuses."""
  try:
    with open(path, 'rb') as f:
      stored = f.read()
  except FileNotFoundError:
    raise DataError(f'{path}: file not found') from None
  except IsADirectoryError:
    raise DataError(f'{path}: is a directory, not a file') from None
  except OSError as e:
    raise DataError(f'{path}: cannot read ({one_line(e)})') from None
  return stored, len(stored), hashlib.sha256(stored).hexdigest()


def _decompress(path: str, stored: bytes) -> bytes:
  if not stored.startswith(b'\x1f\x8b'):  # gzip's magic number, whatever the file's name
    return stored
  try:
    return gzip.decompress(stored)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'{path}: not a valid gzip file ({one_line(e)})') from None


def _ascii_compatible(path: str, data: bytes, encoding: str) -> tuple[bytes, str]:
  """`data` in an encoding whose ASCII bytes mean ASCII, and that encoding's name."""
  try:
    name = codecs.lookup(encoding).name
  except LookupError:
    raise DataError(f'--encoding={encoding}: unknown encoding') from None
  if name.startswith('utf-8'):
    return data.removeprefix(codecs.BOM_UTF8), 'utf-8'
  if name.startswith(_ASCII_SAFE_CODECS):
    return data, name
  try:  # UTF-16 and the like: ASCII bytes may be halves of other characters
    return data.decode(name).encode('utf-8'), 'utf-8'
  except UnicodeDecodeError as e:
    line = data[:e.start].decode(name, errors='replace').count('\n') + 1
    raise DataError(f'{path}:{line}: not valid {encoding} ({e.reason})') from None


def _split_line(line: str, sep: str) -> list[str]:
  if len(sep) == 1:
    return next(csv.reader([line], delimiter=sep))
  return line.split(sep)


def _looks_numeric(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def column_index(path: str, fields: list[str], name: str) -> int:
  """Where header `fields` have column `name`; DataError (file:1) when once is not the case."""
  found = [j for j, field in enumerate(fields) if field == name]
  if len(found) > 1:
    raise DataError(f'{path}:1: column {name!r} appears {len(found)} times in the header')
  if not found:
    if all(_looks_numeric(field) for field in fields):
      raise DataError(f'{path}:1: no header row: the first line {",".join(fields)[:80]!r} '
                      f'looks like data; add a line naming the columns (e.g. {name!r})')
    raise DataError(f'{path}:1: no column {name!r} in the header; its columns are: '
                    + ', '.join(repr(f) for f in fields))
  return found[0]


def _suggest_separator(line: str) -> str:
  found = [sep for sep in (',', '\t', ';', '|') if sep in line]
  return f'; is it {found[0]!r}?' if found else ''


def _locate_columns(path: str, data: bytes, layout: ColumnLayout, encoding: str
                    ) -> tuple[int, _Columns]:
  """The offset of the first data line, and where the needed columns are."""
  roles = dict(user=layout.user, item=layout.item, time=layout.time, rating=layout.rating)
  if not layout.header:
    return 0, _Columns(path, layout.sep, layout.num_columns, **roles)
  newline = data.find(b'\n')
  start = len(data) if newline < 0 else newline + 1
  try:
    header = data[:start].decode(encoding).rstrip('\n')
  except UnicodeDecodeError as e:
    raise DataError(f'{path}:1: the header is not valid {encoding} ({e.reason})') from None
  fields = _split_line(header, layout.sep)
  if len(fields) == 1:
    raise DataError(f'{path}:1: --sep={layout.sep!r} finds one column in the header '
                    f'{header[:80]!r}{_suggest_separator(header)}')
  indexes = {role: None if name is None else column_index(path, fields, name)
             for role, name in roles.items()}
  return start, _Columns(path, layout.sep, len(fields), **indexes)


def _one_byte_separator(data: bytes, columns: _Columns) -> tuple[bytes, int]:
  """`data` with a one-byte separator (ML-1M's '::' becomes a byte it does not contain)."""
  sep = columns.sep.encode()
  if len(sep) == 1:
    return data, sep[0]
  for stand_in in (b'\t', b'\x1f', b'\x1e'):
    if stand_in not in data:
      return data.replace(sep, stand_in), stand_in[0]
  raise DataError(f'{columns.path}: cannot split on {columns.sep!r}: the file holds tabs '
                  'and ASCII separator characters')


# ---------------------------------------------------------------- fast path


def _read_unquoted(data: bytes, start: int, end: int, columns: _Columns, sep: int,
                   first_line: int, encoding: str) -> dict:
  """The needed columns of the lines in data[start:end] (each ending in a newline)."""
  arr = np.frombuffer(data, dtype=np.uint8)
  hashes = {role: ([], []) for role, _ in columns.hashed()}
  times, line_starts = [], []
  position, rows_before = start, 0
  while position < end:
    stop = end
    if end - position > _BLOCK_BYTES:  # blocks end at a newline
      stop = data.rfind(b'\n', position, position + _BLOCK_BYTES) + 1
      if stop <= position:
        stop = data.find(b'\n', position + _BLOCK_BYTES) + 1
    fields = _split_block(arr, position, stop, columns, sep, first_line + rows_before)
    line_starts.append(fields[0][0])
    for role, column in columns.hashed():
      for out, h in zip(hashes[role], _hash_fields(arr, *fields[column])):
        out.append(h)
    if columns.time is not None:
      times.append(_parse_times(data, arr, *fields[columns.time], columns.path,
                                first_line + rows_before))
    rows_before += len(fields[0][0])
    position = stop
  starts = np.concatenate(line_starts)
  out = {role: _ids_from_hashes(data, starts, np.concatenate(h1), np.concatenate(h2), column,
                                sep, encoding)
         for (role, column), (h1, h2) in zip(columns.hashed(), hashes.values())}
  if columns.time is not None:
    out['time'] = np.concatenate(times)
  return out


def _split_block(arr: np.ndarray, begin: int, stop: int, columns: _Columns, sep: int,
                 first_line: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """(starts, ends) offsets of every field of the lines in arr[begin:stop], per column."""
  block = arr[begin:stop]
  is_delimiter = block == sep
  is_delimiter |= block == _NEWLINE
  delimiters = np.flatnonzero(is_delimiter)
  del is_delimiter
  kinds = block[delimiters]
  n = columns.num_columns
  if len(delimiters) % n or (kinds.reshape(-1, n)[:, :-1] != sep).any() or (
      kinds.reshape(-1, n)[:, -1] != _NEWLINE).any():
    raise DataError(_bad_line(block, delimiters, kinds, columns, first_line))
  delimiters += begin
  grid = delimiters.reshape(-1, n)
  line_starts = np.empty(len(grid), dtype=np.int64)
  line_starts[0] = begin
  line_starts[1:] = grid[:-1, -1] + 1
  return [(line_starts if c == 0 else grid[:, c - 1] + 1, grid[:, c]) for c in range(n)]


def _bad_line(block, delimiters, kinds, columns: _Columns, first_line: int) -> str:
  """Names the first line without the expected number of fields (errors only)."""
  newline = kinds == _NEWLINE
  line_of = np.cumsum(newline) - newline  # newlines before each delimiter
  separators = np.bincount(line_of[~newline], minlength=int(newline.sum()))
  bad = int(np.flatnonzero(separators != columns.num_columns - 1)[0])
  line_end = delimiters[newline][bad]
  line_start = 0 if bad == 0 else delimiters[newline][bad - 1] + 1
  where = f'{columns.path}:{first_line + bad}'
  if line_end == line_start:
    return f'{where}: empty line'
  return (f'{where}: expected {columns.num_columns} fields separated by {columns.sep!r}, '
          f'found {separators[bad] + 1}')


def _windows(arr: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
  """(rows, width) uint8 copies of arr[offset:offset + width]; bytes outside arr are 0.

  Rows are cut from a sliding-window view (one short copy per row, no index
  matrix); the few windows that overhang an end of `arr` are filled byte by byte.
  """
  inside = (offsets >= 0) & (offsets <= len(arr) - width)
  if len(arr) >= width and inside.all():
    return np.lib.stride_tricks.sliding_window_view(arr, width)[offsets]
  out = np.zeros((len(offsets), width), dtype=np.uint8)
  if len(arr) >= width:
    out[inside] = np.lib.stride_tricks.sliding_window_view(arr, width)[offsets[inside]]
  for row in np.flatnonzero(~inside):
    index = offsets[row] + np.arange(width)
    valid = (index >= 0) & (index < len(arr))
    out[row, valid] = arr[index[valid]]
  return out


def _gather(arr: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
  """(rows, width) uint8: each field's bytes, left-aligned, zero-padded."""
  out = _windows(arr, starts, width)
  out[np.arange(width) >= lengths[:, None]] = 0
  return out


_MULTIPLIERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


def _mix(h: np.ndarray) -> np.ndarray:
  """A 64-bit finaliser (splitmix64's), so that close inputs spread apart; updates `h`."""
  h ^= h >> np.uint64(30)
  h *= np.uint64(0xBF58476D1CE4E5B9)
  h ^= h >> np.uint64(27)
  h *= np.uint64(0x94D049BB133111EB)
  h ^= h >> np.uint64(31)
  return h


def _hash_fields(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Two independent 64-bit hashes of each field, functions of its bytes alone.

  A field of k 8-byte words takes k mixing rounds whatever the width of the
  rows hashed with it, so equal ids hash equally in every block. Fields are
  hashed in groups of similar length (1, 2, 3-4, 5-8, ... words), so that one
  long field does not widen the work for every row.
  """
  lengths = ends - starts
  words = (lengths + 7) // 8
  group = np.ceil(np.log2(np.maximum(words, 1))).astype(np.int64)
  groups = np.flatnonzero(np.bincount(group))
  out = (np.empty(len(starts), np.uint64), np.empty(len(starts), np.uint64))
  for g in groups:
    rows = np.arange(len(starts)) if len(groups) == 1 else np.flatnonzero(group == g)
    width = 8 << int(g)
    step = max(1, _CHUNK_CELLS // width)
    for first in range(0, len(rows), step):
      part = rows[first:first + step]
      cells = _gather(arr, starts[part], lengths[part], width).view(np.uint64)
      for h_out, multiplier in zip(out, _MULTIPLIERS):
        h = lengths[part].astype(np.uint64) * multiplier
        for j in range(cells.shape[1]):
          h = np.where(j < words[part], _mix(h ^ cells[:, j]) * multiplier, h)
        h_out[part] = h
  return out


def _parse_times(data: bytes, arr: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 path: str, first_line: int) -> np.ndarray:
  """Integer fields (an optional '-' and up to 18 digits) as int64; DataError names a bad one."""
  minus = (arr[starts] == ord('-')) & (ends > starts)
  digit_starts = starts + minus
  ok = (ends > digit_starts) & (ends - digit_starts <= _MAX_DIGITS)
  values = np.zeros(len(starts), dtype=np.int64)
  width = int(np.clip(ends - digit_starts, 1, _MAX_DIGITS).max(initial=1))
  step = max(1, _CHUNK_CELLS // width)
  for first in range(0, len(starts), step):
    part = slice(first, first + step)
    # Right-aligned digits, zeros before the number: Horner's rule needs no mask.
    inside = np.arange(width) >= (digit_starts[part] - ends[part] + width)[:, None]
    digits = _windows(arr, ends[part] - width, width) - np.uint8(ord('0'))
    ok[part] &= ((digits <= 9) | ~inside).all(axis=1)
    digits[~inside] = 0
    value = values[part]
    for j in range(width):
      value *= 10
      value += digits[:, j]
  if not ok.all():
    row = int(np.argmin(ok))
    text = data[starts[row]:ends[row]].decode('utf-8', errors='replace')
    raise DataError(f'{path}:{first_line + row}: {_not_an_integer("timestamp", text)}')
  return np.where(minus, -values, values)


def _not_an_integer(what: str, text: str) -> str:
  kind = 'an integer' if _looks_numeric(text) else 'a number'
  return f'{what} {text!r} is not {kind}'


def _factorize(h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Codes by first appearance, and each code's first row, of rows keyed by (h1, h2)."""
  _, first, inverse = np.unique(h1, return_index=True, return_inverse=True)
  if (h2 != h2[first][inverse]).any():  # two values share h1 (about 1 in 2**40): use both
    pairs = np.stack([h1, h2], axis=1).view(np.dtype((np.void, 16))).ravel()
    _, first, inverse = np.unique(pairs, return_index=True, return_inverse=True)
  order = np.argsort(first)
  rank = np.empty(len(first), dtype=np.int32)
  rank[order] = np.arange(len(first), dtype=np.int32)
  return rank[inverse.ravel()], first[order]


def _ids_from_hashes(data: bytes, line_starts: np.ndarray, h1: np.ndarray, h2: np.ndarray,
                     column: int, sep: int, encoding: str) -> Ids:
  """Factorised hashes, with the text of each distinct value cut from its first line."""
  codes, first_rows = _factorize(h1, h2)
  values = []
  separator = bytes([sep])
  for row in first_rows:
    line_start = int(line_starts[row])
    line = data[line_start:data.index(b'\n', line_start)]
    values.append(line.split(separator)[column])
  return Ids(codes, _decode_values(values, encoding), first_rows)


def _decode_values(values: list[bytes], encoding: str) -> list:
  """Decoded values; undecodable ones stay bytes and are reported by `_check_ids`."""
  out = []
  for value in values:
    try:
      out.append(value.decode(encoding))
    except UnicodeDecodeError:
      out.append(value)
  return out


# ---------------------------------------------------------------- quoted files


def _read_quoted(text: str, columns: _Columns, first_line: int) -> dict:
  """The needed columns of CSV text with quoting, through the `csv` module."""
  reader = csv.reader(io.StringIO(text, newline=''), delimiter=columns.sep, strict=True)
  index = {role: {} for role, _ in columns.hashed()}
  codes = {role: [] for role in index}
  firsts = {role: [] for role in index}
  times, row_lines = [], []
  while True:
    line = first_line + reader.line_num
    try:
      fields = next(reader, None)
    except csv.Error as e:
      raise DataError(f'{columns.path}:{line}: {one_line(e)}') from None
    if fields is None:
      break
    if len(fields) != columns.num_columns:
      what = ('empty line' if not fields else
              f'expected {columns.num_columns} fields separated by {columns.sep!r}, '
              f'found {len(fields)}')
      raise DataError(f'{columns.path}:{line}: {what}')
    row = len(row_lines)
    row_lines.append(line)
    for role, column in columns.hashed():
      code = index[role].setdefault(fields[column], len(index[role]))
      if code == len(firsts[role]):
        firsts[role].append(row)
      codes[role].append(code)
    if columns.time is not None:
      times.append(_int_field(fields[columns.time], columns.path, line))
  out = {role: Ids(np.array(codes[role], dtype=np.int32), list(index[role]),
                   np.array(firsts[role], dtype=np.int64)) for role in index}
  if columns.time is not None:
    out['time'] = np.array(times, dtype=np.int64)
  out['row_lines'] = np.array(row_lines, dtype=np.int64)
  return out


def _int_field(text: str, path: str, line: int) -> int:
  digits = text[1:] if text.startswith('-') else text
  if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS):
    raise DataError(f'{path}:{line}: {_not_an_integer("timestamp", text)}')
  return int(text)


# ---------------------------------------------------------------- both paths


def _ratings(raw: RawColumns, ratings: Ids) -> np.ndarray:
  """Float ratings, parsed once per distinct value."""
  values = np.empty(len(ratings.values))
  for code, text in enumerate(ratings.values):
    line = raw.line(ratings.first_rows[code])
    try:
      values[code] = float(text)
    except (ValueError, TypeError):
      shown = text if isinstance(text, str) else text.decode('utf-8', errors='replace')
      raise DataError(f'{raw.path}:{line}: rating {shown!r} is not a number') from None
    if not np.isfinite(values[code]):
      raise DataError(f'{raw.path}:{line}: rating {text!r} is not finite')
  return values[ratings.codes]


def _check_ids(raw: RawColumns, what: str, ids: Ids, integer_ids: bool) -> None:
  """DataError naming file:line for an id that cannot be written to an id map."""
  for code, value in enumerate(ids.values):
    problem = None
    if isinstance(value, bytes):
      problem = 'is not valid text in the file\'s encoding (see --encoding)'
    elif not value:
      problem = 'is empty'
    elif '\t' in value or '\n' in value or '\r' in value:
      problem = 'contains a tab or a line break'
    elif integer_ids and not (value.isascii() and value.isdigit()):
      problem = 'is not an integer >= 0'
    if problem is not None:
      line = raw.line(ids.first_rows[code])
      raise DataError(f'{raw.path}:{line}: {what} id {value!r} {problem}')


def sort_keys(values: list[str]) -> np.ndarray:
  """Ranks that order ids numerically when all are decimal integers, else by first appearance.

  Numeric order keeps files with integer ids (MovieLens) processed exactly as
  the integer-id code did, whichever format they are read with.
  """
  if all(v.isascii() and v.isdigit() and len(v) <= _MAX_DIGITS for v in values):
    numbers = np.array([int(v) for v in values], dtype=np.int64)
    order = np.lexsort((np.arange(len(values)), numbers))  # '007' after '7': by appearance
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[order] = np.arange(len(values))
    return ranks
  return np.arange(len(values), dtype=np.int64)
