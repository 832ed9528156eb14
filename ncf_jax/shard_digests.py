"""Content digests of a (possibly sharded) state from the shards each process holds.

Every array is cut along its first axis into blocks of `block_rows(rows)` rows (a function
of the global shape alone) and further at the edges of the shards that hold it; each piece
is digested (BLAKE2b-128 of the dtype, the global shape and the piece's bytes) and keyed by
its global row range "start:stop". A process digests only its shards of replica 0, so each
piece is digested once over all processes and no array is gathered or copied whole onto a
host: the cost per process is its own shards.

Digesting runs on a worker thread (and a few pool threads) over host copies of the local
shards (`host_copies`, taken on the caller's thread because the next train step donates the
device buffers); BLAKE2b releases the GIL, so training goes on meanwhile.

Verification works on any mesh: a process checks every recorded piece whose rows it holds
(in one local shard or adjacent ones), and every process checks that the recorded pieces
of each array tile its rows exactly (a lost record of some process's shards is noticed). A
single-process reader holds every row, so it checks every piece. A piece that no process
holds whole (the reading mesh cuts inside a writer's piece on a process boundary) is left
unchecked; with tables padded to multiples of 1,024 rows and block rows multiples of 1,024
this needs a reading mesh whose per-process rows are not multiples of the writer's pieces.
A table restored with other padding rows (a mesh of another `tables.row_multiple`) verifies
against the writer's pieces: its real rows as read, the padding rows as zeros
(`first_mismatch`'s `real_rows`).
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import threading

import jax
import numpy as np

MIN_BLOCK_ROWS = 1024
MAX_BLOCKS = 4096  # per array: bounds the record's size for tables of any height


def block_rows(rows: int) -> int:
  """Rows per digest block of an array of `rows` rows: 1,024, doubled until at most
  MAX_BLOCKS blocks (a 100M-row table: 32,768 rows, 3,052 blocks)."""
  size = MIN_BLOCK_ROWS
  while rows > size * MAX_BLOCKS:
    size *= 2
  return size


def path_name(path) -> str:
  """A key path as 'a/b/c' (dict keys, attributes and indices alike)."""
  names = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
  return '/'.join(names)


@dataclasses.dataclass
class HostRows:
  """Host copies of the rows of one array that this process holds."""
  name: str
  dtype: np.dtype
  shape: tuple[int, ...]
  pieces: list  # [(start row, stop row, np.ndarray of those rows)]

  @property
  def rows(self) -> int:
    return self.shape[0] if self.shape else 1

  def header(self) -> bytes:
    return f'{np.dtype(self.dtype).str}{tuple(self.shape)}'.encode()


def _row_range(index: tuple, shape: tuple) -> tuple[int, int]:
  """The global rows [start, stop) of a shard; ValueError if it splits another axis."""
  if not shape:
    return 0, 1
  for axis, part in enumerate(index[1:], start=1):
    if part.indices(shape[axis])[:2] != (0, shape[axis]):
      raise ValueError(f'shards split axis {axis}: only row (first-axis) sharding is digested')
  start, stop, _ = index[0].indices(shape[0])
  return start, stop


def _to_host(data) -> np.ndarray:
  """A host copy that stays valid after the device buffer is donated or deleted."""
  host = np.asarray(jax.device_get(data))
  # On the CPU backend device_get may hand back a view of the device buffer itself.
  return np.array(host, copy=True) if host.base is not None or not host.flags.owndata else host


def host_copies(state, writer: bool) -> list[HostRows]:
  """Host copies of the local shards of every array of `state`: for a `writer`, those of
  replica 0 only (each piece once over all processes); for a reader, every distinct local
  row range."""
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    shape = tuple(np.shape(leaf))
    dtype = leaf.dtype if hasattr(leaf, 'dtype') else np.asarray(leaf).dtype
    rows = HostRows(path_name(path), np.dtype(dtype), shape, [])
    if isinstance(leaf, jax.Array):
      seen = set()
      for shard in leaf.addressable_shards:
        if writer and shard.replica_id != 0:
          continue
        span = _row_range(shard.index, shape)
        if span not in seen:
          seen.add(span)
          rows.pieces.append((*span, shard.data))
      # Start every transfer before waiting for any (one round trip, not one per shard).
      hosts = [_to_host(d) for d in jax.device_get([p[2] for p in rows.pieces])]
      rows.pieces = [(a, b, h) for (a, b, _), h in zip(rows.pieces, hosts)]
    else:
      rows.pieces.append((0, rows.rows, np.array(leaf, copy=True)))
    out.append(rows)
  return out


def _digest(header: bytes, data: np.ndarray) -> str:
  return hashlib.blake2b(header + np.ascontiguousarray(data).tobytes(), digest_size=16).hexdigest()


def digest(copies: list[HostRows], threads: int = 1) -> dict[str, dict[str, str]]:
  """{array name: {"start:stop": hex digest}} of the pieces in `copies`, over `threads`
  threads (BLAKE2b releases the GIL on large buffers)."""
  tasks = []
  for array in copies:
    block, header = block_rows(array.rows), array.header()
    for start, stop, data in array.pieces:
      flat = data.reshape(stop - start, -1)
      row = start
      while row < stop:
        end = min(stop, (row // block + 1) * block)
        tasks.append((array.name, f'{row}:{end}', header, flat[row - start:end - start]))
        row = end
  work = lambda task: _digest(task[2], task[3])
  if threads > 1 and len(tasks) > 1:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      digests = list(pool.map(work, tasks))
  else:
    digests = [work(task) for task in tasks]
  out = {array.name: {} for array in copies}
  for (name, key, _, _), value in zip(tasks, digests):
    out[name][key] = value
  return out


def default_threads() -> int:
  """Digest threads: a few of the host's cores (the training loop needs the rest)."""
  return max(1, min(4, (os.cpu_count() or 1) // 2))


class DigestWorker:
  """`digest(copies)` on a thread; `result()` joins it and returns (or raises) its outcome."""

  def __init__(self, copies: list[HostRows]):
    self._outcome = None
    self._thread = threading.Thread(target=self._run, args=(copies,), daemon=True,
                                    name='ncf_jax checkpoint digests')
    self._thread.start()

  def _run(self, copies):
    try:
      self._outcome = ('ok', digest(copies, default_threads()))
    except BaseException as e:  # pylint: disable=broad-except
      self._outcome = ('error', e)

  def result(self) -> dict:
    self._thread.join()
    kind, value = self._outcome
    if kind == 'error':
      raise value
    return value


def merge(records: list[dict]) -> tuple[dict, str | None]:
  """The union of several processes' records, and the first conflict (or None)."""
  merged = {}
  for record in records:
    for name, pieces in record.items():
      into = merged.setdefault(name, {})
      for key, value in pieces.items():
        if into.setdefault(key, value) != value:
          return merged, f'{name} rows {key} have two different recorded digests'
  return merged, None


def _spans(pieces: dict) -> list[tuple[int, int]]:
  return sorted(tuple(int(x) for x in key.split(':')) for key in pieces)


def _local_rows(array: HostRows, start: int, stop: int) -> np.ndarray | None:
  """Rows [start, stop) from the local pieces, or None when they are not all held here."""
  parts, row = [], start
  for a, b, data in sorted(array.pieces, key=lambda p: p[0]):
    if a <= row < b:
      end = min(b, stop)
      parts.append(data.reshape(b - a, -1)[row - a:end - a])
      row = end
      if row == stop:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
  return None


def first_mismatch(recorded: dict, copies: list[HostRows],
                   real_rows: dict[str, int] | None = None) -> str | None:
  """Where `copies` differ from the `recorded` digests (arrays, row ranges), or None. Arrays
  of the record that `copies` do not have are ignored: a reader may restore part of a state.

  `real_rows` ({array name: real rows}) names arrays whose rows beyond the real ones are
  padding, which a reader on another mesh may hold more or fewer of (`tables`): such an
  array is checked against the writer's rows (the end of its recorded pieces), each piece
  read from the local rows and, beyond them, zeros (padding rows the reader dropped must
  have been zero; rows it added are zeros that no piece covers)."""
  real_rows = real_rows or {}
  for array in copies:
    pieces = recorded.get(array.name)
    if pieces is None:
      return f'{array.name} has no recorded digest'
    row = 0
    for start, stop in _spans(pieces):
      if start != row:
        return f'{array.name}: the recorded digests do not cover rows {row}..{start - 1}'
      row = stop
    written, real = row, real_rows.get(array.name)
    if written != array.rows and (real is None or min(written, array.rows) < real):
      return (f'{array.name}: the recorded digests do not cover rows {row}..{array.rows - 1}'
              if written < array.rows else
              f'{array.name}: the recorded digests cover {written} rows, not {array.rows}')
    header = (array.header() if written == array.rows else
              HostRows(array.name, array.dtype, (written, *array.shape[1:]), []).header())
    for start, stop in _spans(pieces):
      held = max(start, min(stop, array.rows))  # rows [start, held) are in the array
      rows = _local_rows(array, start, held) if start < held else np.zeros((0,), array.dtype)
      if rows is None:
        continue  # not all held by this process
      if held < stop:  # rows the reader's padding dropped: zero when written
        width = int(np.prod(array.shape[1:], dtype=np.int64))
        rows = np.concatenate([rows.reshape(-1, width),
                               np.zeros((stop - held, width), array.dtype)])
      if _digest(header, rows) != pieces[f'{start}:{stop}']:
        return f'{array.name} rows {start}..{stop - 1}'
  return None
