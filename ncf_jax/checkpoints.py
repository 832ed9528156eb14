"""One directory of numbered Orbax checkpoints of a state pytree, verified on restore.

Each checkpoint holds two items: `state` (the pytree, Orbax's standard format)
and `digests`, a JSON record of the state's contents: for every array, a
BLAKE2b digest of each block of `ROW_BLOCK` rows along its first axis, keyed
by the block's first row. Orbax 0.12 verifies no array contents (only a
zarr3 shard index carries a CRC), so a damaged data file could otherwise be
restored as garbage. The digests depend on the values alone, not on how the
arrays are sharded or on how many devices wrote them, so a checkpoint written
on 8 devices verifies on 1.

Before restoring, the stored tree is checked against the expected one, so a
checkpoint from another model or size fails with the path of the first
mismatching parameter. Which directories a run keeps (`latest/`, `best/`) is
the run folder's business (`run_dir.py`).
"""

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import shutil
import signal
import sys
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

from ncf_jax import interrupts
from ncf_jax.errors import CheckpointError, DamagedCheckpointError

ROW_BLOCK = 1024  # rows per digest block: fixed, so digests do not depend on sharding
TMP_MARK = '.orbax-checkpoint-tmp'  # in the name of a save Orbax has not committed


def describe_error(e: Exception, limit: int = 300) -> str:
  """`Type: message` on one line: Orbax/TensorStore errors append multi-line specs."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  for cut in (' [tensorstore_spec=', '. See full TensorStore details'):
    text = text.split(cut)[0]
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _is_closed_loop_noise(unraisable) -> bool:
  """When one read of a damaged checkpoint fails, Orbax closes its event loop while
  TensorStore still completes the other reads; each then reports "Event loop is
  closed" through `sys.unraisablehook`, and the abandoned coroutines another when
  collected."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
    return True
  return (asyncio.iscoroutine(unraisable.object)
          and isinstance(error.__cause__ or error.__context__, GeneratorExit))


def _is_abandoned_task_record(record: logging.LogRecord) -> bool:
  """asyncio's "(Task|Future|_GatheringFuture) exception was never retrieved", logged when
  the failed reads of an abandoned restore are collected."""
  return 'exception was never retrieved' in str(record.msg)


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """Drops (only) that noise while a restore runs. A restore that fails leaves the filters in
  place: TensorStore may complete the abandoned reads, and their tasks may be collected,
  after the error has been raised."""
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_noise(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
  asyncio_log = logging.getLogger('asyncio')
  task_filter = lambda record: not _is_abandoned_task_record(record)
  asyncio_log.addFilter(task_filter)
  yield
  gc.collect()  # a successful restore abandons nothing; finalise before putting them back
  asyncio_log.removeFilter(task_filter)
  sys.unraisablehook = previous


@contextlib.contextmanager
def _interrupts_held():
  """Holds SIGINT and SIGTERM until the block ends, then delivers them: a save is started
  whole or not at all, and a pending one is finished before the process stops."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  pending = []
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  for sig in previous:
    signal.signal(sig, lambda signum, frame: pending.append(signum))
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for sig in pending:
      signal.raise_signal(sig)


def _path_names(path) -> tuple[str, ...]:
  """A key path as plain names, so dict keys, attributes and indices compare alike."""
  names = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
  return tuple(names)


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {_path_names(p): tuple(np.shape(x) if not hasattr(x, 'shape') else x.shape)
          for p, x in leaves}


def check_tree_matches(expected, found, where: str) -> None:
  """Raises CheckpointError naming the first path whose presence or shape differs."""
  want, have = _shapes(expected), _shapes(found)
  # Parameters first: their names say more than the optimizer slots that mirror them.
  for path in sorted(set(want) | set(have), key=lambda p: (p[:1] != ('params',), p)):
    name = '/'.join(path)
    if path not in have:
      raise CheckpointError(f'{where}: parameter {name} is missing (expected shape {want[path]})')
    if path not in want:
      raise CheckpointError(f'{where}: unexpected parameter {name} (shape {have[path]})')
    if want[path] != have[path]:
      raise CheckpointError(f'{where}: parameter {name} has shape {have[path]}, '
                            f'expected {want[path]}')


def _host_array(x) -> np.ndarray:
  """The whole array on this host (gathered from the other processes when it is not)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def content_digests(state) -> dict[str, dict[str, str]]:
  """{array path: {first row of a block: hex digest of the block's bytes}}."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    array = np.ascontiguousarray(_host_array(leaf))
    rows = array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)
    header = f'{array.dtype.str}{array.shape}'.encode()
    out['/'.join(_path_names(path))] = {
        str(start): hashlib.blake2b(header + rows[start:start + ROW_BLOCK].tobytes(),
                                    digest_size=16).hexdigest()
        for start in range(0, max(len(rows), 1), ROW_BLOCK)}
  return out


def _first_mismatch(expected: dict, found: dict) -> str | None:
  """The first array (and block) whose digest differs, or None."""
  for name in sorted(set(expected) | set(found)):
    want, have = expected.get(name), found.get(name)
    if want is None or have is None:
      return f'{name} has no recorded digest' if want is None else f'{name} is not in the state'
    for start in sorted(set(want) | set(have), key=int):
      if want.get(start) != have.get(start):
        return f'{name} rows {start}..{int(start) + ROW_BLOCK - 1}'
  return None


class CheckpointDir:
  """Numbered checkpoints (the step is the epoch) of one state pytree in one directory."""

  def __init__(self, directory: str, keep: int | None = None, writer: bool = False):
    """`writer`: this process holds the run's lock; it may create and clean the directory
    (a reader never changes anything, since a run may be writing into it)."""
    self.directory = os.path.abspath(directory)
    # Several processes save together; only process 0 (the lock holder) tidies up.
    self._tidies = writer and jax.process_index() == 0
    if self._tidies:
      self._remove_abandoned_saves()  # of a killed run
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'digests': ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=writer,
            # A run saves into two directories at once: their barriers must not share names.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=os.path.basename(self.directory))))

  def where(self, epoch: int) -> str:
    return os.path.join(self.directory, str(epoch))

  def epochs(self) -> list[int]:
    """The complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, epoch: int, state) -> None:
    """Saves asynchronously, replacing a checkpoint of the same epoch."""
    digests = content_digests(state)
    with _interrupts_held():
      if epoch in self._manager.all_steps():  # retrained after resuming from an older epoch
        self._manager.wait_until_finished()
        self._manager.delete(epoch)
      self._manager.save(epoch, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), digests=ocp.args.JsonSave(digests)))

  def delete(self, epoch: int) -> None:
    self._manager.wait_until_finished()
    self._manager.delete(epoch)

  def stored_tree(self, epoch: int):
    """The stored state's metadata (shapes and dtypes); CheckpointError if unreadable."""
    try:
      metadata = self._manager.item_metadata(epoch)['state']
      found = getattr(metadata, 'tree', metadata)
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(f'{self.where(epoch)}: unreadable checkpoint '
                                   f'({describe_error(e)})') from None
    if found is None:
      raise DamagedCheckpointError(f'{self.where(epoch)}: unreadable checkpoint (no metadata)')
    return found

  def restore(self, epoch: int, abstract_state):
    """The state of `epoch`, checked against `abstract_state` (shapes, dtypes, shardings)
    and verified against its digests; CheckpointError naming the checkpoint if not."""
    where = self.where(epoch)
    interrupts.check()  # a restore blocks for long: stop before it, and after (below)
    with _quiet_abandoned_reads():
      check_tree_matches(abstract_state, self.stored_tree(epoch), where)
      try:
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), digests=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        raise DamagedCheckpointError(f'{where}: cannot restore ({describe_error(e)})') from None
    interrupts.check()  # outside the finalisers `_quiet_abandoned_reads` runs
    mismatch = _first_mismatch(restored['digests'] or {}, content_digests(restored['state']))
    if mismatch is not None:
      raise DamagedCheckpointError(f'{where}: damaged checkpoint (the contents of {mismatch} do not '
                            'match the digest recorded when it was saved)')
    return restored['state']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes, then releases the manager; a writer then removes what a save
    cut short by an interrupt left (Orbax never reads it, but nothing is left half-written)."""
    with _interrupts_held():
      self._manager.wait_until_finished()
      self._manager.close()
    if self._tidies:
      self._remove_abandoned_saves()

  def _remove_abandoned_saves(self) -> None:
    if os.path.isdir(self.directory):
      for name in os.listdir(self.directory):
        if TMP_MARK in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
