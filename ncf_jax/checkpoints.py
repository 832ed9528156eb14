"""One directory of numbered Orbax checkpoints of a state pytree, verified on restore.

  DIR/<epoch>/state/                     the pytree (Orbax's standard format)
  DIR/<epoch>/meta/                      JSON: the epoch and step it holds, the run's
                                         identity digest and the epoch's metrics record
  DIR/<epoch>/digests.process_<k>.json   content digests of process k's shards

A save is two-phase: `save` starts Orbax's asynchronous write and a digest worker thread
(`shard_digests`: each process digests the shards it holds, keyed by global row range; no
array is gathered); `finish_save` waits for both and writes the digests, after which the
checkpoint is durable. A checkpoint without its digests is a save that did not finish: a
writer removes it (and Orbax's `*.orbax-checkpoint-tmp` folders) on opening. A failed save
is a `CheckpointSaveError` naming the path and the epoch; nothing of it is left.

Restoring checks the stored tree against the expected one (the path of the first
mismatching parameter), the meta record against the folder's epoch and the run's identity,
and the contents against the digests, on any mesh. Readers restore the parameters alone
(`restore_params`). Which epochs a run keeps is the run folder's business (`run_dir.py`).
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
from typing import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from ncf_jax import interrupts
from ncf_jax import shard_digests
from ncf_jax.data.files import atomic_write_text
from ncf_jax.errors import CheckpointError, CheckpointSaveError, DamagedCheckpointError

TMP_MARK = '.orbax-checkpoint-tmp'  # in the name of a save Orbax has not committed
DIGESTS = 'digests.process_{}.json'
FORMAT = 2  # 1: a `digests` item inside the Orbax checkpoint, computed on the whole arrays


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
  interrupts.check()  # a restore blocks for long: a recorded SIGTERM stops before it...
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_noise(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
  asyncio_log = logging.getLogger('asyncio')
  task_filter = lambda record: not _is_abandoned_task_record(record)
  asyncio_log.addFilter(task_filter)
  yield
  # A successful restore abandons nothing (checked: a collection after it finds no garbage),
  # so the filters go without a gc.collect(), which took 0.1-0.5 s a restore in a process
  # holding many JAX objects (a notebook, a test session).
  asyncio_log.removeFilter(task_filter)
  sys.unraisablehook = previous
  interrupts.check()  # ...and after it


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
  return tuple(shard_digests.path_name(path).split('/'))


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {_path_names(p): tuple(np.shape(x) if not hasattr(x, 'shape') else x.shape)
          for p, x in leaves}


def padding_rows(tree, tables: Sequence = ()) -> dict[str, int]:
  """{array name: real rows} of every array of `tree` that is one of `tables` (TableSpecs)
  or an optimizer slot of one (a leaf under a path containing the table's, with its
  rows): the rows beyond the real ones are padding, which another mesh pads differently
  (`tables.row_multiple`)."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    names, shape = _path_names(path), tuple(np.shape(leaf))
    for spec in tables:
      inside = any(names[i:i + len(spec.path)] == tuple(spec.path)
                   for i in range(len(names) - len(spec.path) + 1))
      if shape and inside and shape[0] == spec.shape[0]:
        out['/'.join(names)] = spec.rows
  return out


def _repadded(want: tuple, have: tuple, real_rows: int | None) -> bool:
  """Whether a stored array of shape `have` restores into `want` by re-padding: the same
  but for the padding rows, both holding every real row."""
  return (real_rows is not None and len(want) == len(have) >= 1 and want[1:] == have[1:]
          and min(want[0], have[0]) >= real_rows)


def check_tree_matches(expected, found, where: str,
                       real_rows: dict[str, int] | None = None) -> bool:
  """Raises CheckpointError naming the first path whose presence or shape differs (arrays
  named in `real_rows` may differ in padding rows); returns whether any does."""
  real_rows = real_rows or {}
  repad = False
  want, have = _shapes(expected), _shapes(found)
  # Parameters first: their names say more than the optimizer slots that mirror them.
  for path in sorted(set(want) | set(have), key=lambda p: (p[:1] != ('params',), p)):
    name = '/'.join(path)
    if path not in have:
      raise CheckpointError(f'{where}: parameter {name} is missing (expected shape {want[path]})')
    if path not in want:
      raise CheckpointError(f'{where}: unexpected parameter {name} (shape {have[path]})')
    if want[path] != have[path]:
      if _repadded(want[path], have[path], real_rows.get(name)):
        repad = True
        continue
      raise CheckpointError(f'{where}: parameter {name} has shape {have[path]}, '
                            f'expected {want[path]}')
  return repad



class _QuietOrbaxSaveErrors(logging.Filter):
  """Orbax logs a failed background save with its tracebacks (hundreds of lines) before
  raising the error again at the wait, where `finish_save` reports it in one line. It also
  warns at a save about the time `finish_save` spent waiting for the previous one: that wait
  is this module's design (a record only after a durable checkpoint), not a hint to save
  less often."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    if record.levelno >= logging.ERROR:
      return False
    return 'Waiting for previous save to complete' not in str(record.msg)


def _legacy_record(digests: dict, state) -> dict:
  """A format-1 `digests` item ({name: {first row: digest}}, blocks of 1,024 rows) as
  row-range keys; the same digests when the array has at most 4M rows (one block size)."""
  rows = {shard_digests.path_name(p): (x.shape[0] if x.shape else 1)
          for p, x in jax.tree_util.tree_leaves_with_path(state)}
  shapes = {shard_digests.path_name(p) for p, x in jax.tree_util.tree_leaves_with_path(state)
            if x.shape}
  out = {}
  for name, pieces in digests.items():
    total = rows.get(name)
    if total is None or name not in shapes or shard_digests.block_rows(total) != 1024:
      continue  # (format 1 digested a scalar as shape (1,): left unchecked)
    out[name] = {f'{int(s)}:{min(int(s) + 1024, total)}': h for s, h in pieces.items()}
  return out


class CheckpointDir:
  """Numbered checkpoints (the step is the epoch) of one state pytree in one directory."""

  def __init__(self, directory: str, writer: bool = False):
    """`writer`: this process holds the run's lock; it may create and clean the directory
    (a reader never changes anything, since a run may be writing into it)."""
    self.directory = os.path.abspath(directory)
    self._writer = writer
    # Several processes save together; only process 0 (the lock holder) tidies up.
    self._tidies = writer and jax.process_index() == 0
    self._pending = None  # (epoch, DigestWorker) of a save not yet finished
    if self._tidies:
      self._remove_unfinished()  # of a killed run
    self._quiet = _QuietOrbaxSaveErrors() if writer else None
    if self._quiet is not None:
      logging.getLogger('absl').addFilter(self._quiet)
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler(),
                       'digests': ocp.JsonCheckpointHandler()},  # format 1 (read only)
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, create=writer,  # the run folder decides what to keep
            # A run may save into several directories: their barriers must not share names.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=os.path.basename(self.directory))))

  def where(self, epoch: int) -> str:
    return os.path.join(self.directory, str(epoch))

  def _digest_files(self, epoch: int) -> list[str]:
    where = self.where(epoch)
    try:
      names = os.listdir(where)
    except OSError:
      return []
    return sorted(os.path.join(where, n) for n in names
                  if n.startswith('digests.process_') and n.endswith('.json'))

  def _is_legacy(self, epoch: int) -> bool:
    return (not self._digest_files(epoch)
            and os.path.isdir(os.path.join(self.where(epoch), 'digests')))

  def is_durable(self, epoch: int) -> bool:
    """Whether `epoch`'s save finished: Orbax committed it and its digests are written."""
    if self._pending is not None and self._pending[0] == epoch:
      return False
    return bool(self._digest_files(epoch)) or self._is_legacy(epoch)

  def epochs(self) -> list[int]:
    """The durable checkpoints, oldest first."""
    return [e for e in sorted(self._manager.all_steps()) if self.is_durable(e)]

  def save(self, epoch: int, state, meta: dict) -> None:
    """Starts saving `state` (replacing a checkpoint of the same epoch) with its `meta`
    record; returns once the device buffers are copied. `finish_save` makes it durable."""
    if self._pending is not None:
      raise RuntimeError(f'{self.where(self._pending[0])}: save not finished')
    try:
      with _interrupts_held():
        worker = shard_digests.DigestWorker(shard_digests.host_copies(state, writer=True))
        if epoch in self._manager.all_steps():  # retrained after resuming from an older epoch
          self._manager.wait_until_finished()
          self._manager.delete(epoch)
        self._pending = (epoch, worker)
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(epoch, e) from None

  def finish_save(self) -> int | None:
    """Waits for the pending save and its digests and writes them: the checkpoint is then
    durable. Returns its epoch (None when nothing was pending); CheckpointSaveError (and
    nothing of the save left) if it failed."""
    if self._pending is None:
      return None
    epoch, worker = self._pending
    try:
      with _interrupts_held():
        self._manager.wait_until_finished()
        digests = worker.result()
        self._sync(f'saved {epoch}')  # every process: Orbax committed the folder
        text = json.dumps({'format': FORMAT, 'arrays': digests}, sort_keys=True)
        atomic_write_text(os.path.join(self.where(epoch), DIGESTS.format(jax.process_index())),
                          text)
        _fsync_directory(self.where(epoch))
        self._sync(f'digested {epoch}')
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(epoch, e) from None
    self._pending = None
    return epoch

  def _sync(self, what: str) -> None:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'ncf_jax {self.directory} {what}')

  def _save_failed(self, epoch: int, error: Exception) -> CheckpointSaveError:
    """Removes what the failed save of `epoch` left; the error to raise."""
    self._pending = None
    with contextlib.suppress(Exception):
      self._manager.wait_until_finished()
    self._discard(epoch)
    reason = (error.strerror if isinstance(error, OSError) and error.strerror
              else describe_error(error))
    return CheckpointSaveError(f'{self.where(epoch)}: cannot save epoch {epoch} ({reason})')

  def _discard(self, epoch: int) -> None:
    if jax.process_index() != 0:
      return
    for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
      if name == str(epoch) or name.startswith(f'{epoch}{TMP_MARK}'):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    with contextlib.suppress(Exception):
      self._manager.reload()

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

  def meta(self, epoch: int) -> dict:
    """The meta record of `epoch` ({} for a format-1 checkpoint, which has none)."""
    if self._is_legacy(epoch):
      return {}
    try:
      with _quiet_abandoned_reads():
        meta = self._manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = meta['meta']
    except Exception as e:  # pylint: disable=broad-except
      raise DamagedCheckpointError(f'{self.where(epoch)}: unreadable checkpoint record '
                                   f'({describe_error(e)})') from None
    if not isinstance(meta, dict):
      raise DamagedCheckpointError(f'{self.where(epoch)}: unreadable checkpoint record')
    return meta

  def _check_meta(self, epoch: int, meta: dict, identity: str | None,
                  step: int | None = None) -> None:
    """DamagedCheckpointError when the checkpoint is not what its folder says it is."""
    if not meta:
      return  # format 1: nothing recorded to check
    where = self.where(epoch)
    if meta.get('epoch') != epoch:
      raise DamagedCheckpointError(
          f'{where}: holds epoch {meta.get("epoch")}, not {epoch} (checkpoint folders renamed '
          'or swapped)')
    if step is not None and meta.get('step') != step:
      raise DamagedCheckpointError(f'{where}: holds step {step}, its record says '
                                   f'{meta.get("step")}')
    if identity is not None and meta.get('run_identity') not in (None, identity):
      raise DamagedCheckpointError(
          f'{where}: a checkpoint of another run (run identity {meta.get("run_identity")}, '
          f'this run {identity})')

  def _recorded_digests(self, epoch: int, legacy: dict | None, state) -> dict:
    where = self.where(epoch)
    if legacy is not None:
      return _legacy_record(legacy, state)
    records = []
    for path in self._digest_files(epoch):
      try:
        with open(path, encoding='utf-8') as f:
          records.append(json.load(f)['arrays'])
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(f'{path}: unreadable digests '
                                     f'({describe_error(e)})') from None
    if not records:
      raise DamagedCheckpointError(f'{where}: no content digests (the save did not finish)')
    merged, conflict = shard_digests.merge(records)
    if conflict is not None:
      raise DamagedCheckpointError(f'{where}: damaged checkpoint ({conflict})')
    return merged

  def _verify(self, epoch: int, tree, legacy: dict | None = None,
              real_rows: dict | None = None) -> None:
    recorded = self._recorded_digests(epoch, legacy, tree)
    copies = shard_digests.host_copies(tree, writer=False)
    if legacy is not None:  # format 1: the arrays its record can vouch for
      copies = [c for c in copies if c.name in recorded]
    mismatch = shard_digests.first_mismatch(recorded, copies, real_rows)
    if mismatch is not None:
      raise DamagedCheckpointError(
          f'{self.where(epoch)}: damaged checkpoint (the contents of {mismatch} do not match '
          'the digest recorded when it was saved)')

  def restore(self, epoch: int, abstract_state, identity: str | None = None,
              tables: Sequence = ()):
    """(state, meta) of `epoch`, checked against `abstract_state` (shapes, dtypes,
    shardings), its meta record (epoch, step, `identity` when given) and its digests;
    DamagedCheckpointError (or CheckpointError) naming the checkpoint if not.

    `tables` (TableSpecs of the state's embedding tables): a table (and its optimizer
    slots) written with other padding rows (on a mesh of another `tables.row_multiple`)
    is re-padded: padding rows dropped or added as zeros, its real rows verified against
    the digests written on the other mesh."""
    where = self.where(epoch)
    legacy = self._is_legacy(epoch)
    real_rows = padding_rows(abstract_state, tables)
    with _quiet_abandoned_reads():
      repad = check_tree_matches(abstract_state, self.stored_tree(epoch), where, real_rows)
      try:
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state, strict=not repad),
            **({'digests': ocp.args.JsonRestore()} if legacy
               else {'meta': ocp.args.JsonRestore()})))
      except Exception as e:  # pylint: disable=broad-except
        raise DamagedCheckpointError(f'{where}: cannot restore ({describe_error(e)})') from None
    state = restored['state']
    meta = {} if legacy else (restored['meta'] or {})
    step = state.get('step') if isinstance(state, dict) else None
    self._check_meta(epoch, meta, identity, None if step is None else int(step))
    self._verify(epoch, state, (restored['digests'] or {}) if legacy else None, real_rows)
    return state, meta

  def restore_params(self, epoch: int, abstract_params, shardings=None,
                     identity: str | None = None, tables: Sequence = ()):
    """(params, meta) of `epoch`: the `params` subtree alone (no optimizer moments are
    read), placed by `shardings` (a tree like `abstract_params`; default: all on one
    device), checked, re-padded (`tables`) and verified like `restore`."""
    where = self.where(epoch)
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree_util.tree_map(lambda _: device, abstract_params)
    abstract = {'params': jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params,
        shardings)}
    legacy = self._is_legacy(epoch)
    real_rows = padding_rows(abstract, tables)
    with _quiet_abandoned_reads():
      stored = self.stored_tree(epoch)
      repad = check_tree_matches(abstract, {'params': stored.get('params', {})}
                                 if isinstance(stored, dict) else {}, where, real_rows)
      meta = self.meta(epoch)
      self._check_meta(epoch, meta, identity)
      restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
      if repad:  # Orbax pads with zeros or cuts the rows beyond the stored ones
        restore_args = jax.tree_util.tree_map(
            lambda a: dataclasses.replace(a, strict=False) if hasattr(a, 'strict') else a,
            restore_args)
      try:
        params = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
            os.path.join(where, 'state'), args=ocp.args.PyTreeRestore(
                item=abstract, partial_restore=True, restore_args=restore_args))
        legacy_digests = (self._manager.restore(epoch, args=ocp.args.Composite(
            digests=ocp.args.JsonRestore()))['digests'] or {}) if legacy else None
      except Exception as e:  # pylint: disable=broad-except
        raise DamagedCheckpointError(f'{where}: cannot restore ({describe_error(e)})') from None
    self._verify(epoch, params, legacy_digests, real_rows)
    return params['params'], meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending writes, then releases the manager; a writer then removes what a
    save that never finished left (Orbax never reads it, but nothing is left half-written)."""
    with _interrupts_held():
      with contextlib.suppress(Exception):  # a failed save was reported by finish_save
        self._manager.wait_until_finished()
      self._manager.close()
    self._pending = None
    if self._quiet is not None:
      logging.getLogger('absl').removeFilter(self._quiet)
      self._quiet = None
    if self._tidies:
      self._remove_unfinished()

  def _remove_unfinished(self) -> None:
    """Orbax's temporary folders and committed checkpoints without digests (a save cut
    short before it finished)."""
    if not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      path = os.path.join(self.directory, name)
      unfinished = name.isdigit() and os.path.isdir(path) and not self.is_durable(int(name))
      if TMP_MARK in name or unfinished:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_directory(path: str) -> None:
  """Makes the names in `path` (a rename into it) durable."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)
