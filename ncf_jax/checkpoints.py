"""Orbax checkpoints of the train state: the latest few for resuming, the best for use.

Two managers under `<workdir>/checkpoints`, because Orbax's `best_fn` with
`max_to_keep` may delete the newest checkpoint (which resuming needs):
`latest/` keeps the last `keep` epochs, `best/` the epoch that first reached
the best selection metric (the caller decides; ties keep the earlier epoch). The step number is the epoch. Before restoring, the stored
tree is checked against the expected one, so a checkpoint from another model
or size fails with the path of the first mismatching parameter.
"""

import asyncio
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from ncf_jax.errors import CheckpointError


def describe_error(e: Exception, limit: int = 300) -> str:
  """`Type: message` on one line: Orbax/TensorStore errors append multi-line specs."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ''
  for cut in (' [tensorstore_spec=', '. See full TensorStore details'):
    text = text.split(cut)[0]
  if len(text) > limit:
    text = text[:limit] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _drop_closed_loop_noise(previous):
  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      return
    if (asyncio.iscoroutine(unraisable.object)
        and isinstance(error.__cause__ or error.__context__, GeneratorExit)):
      return  # a read coroutine abandoned with its loop, complaining as it is closed
    previous(unraisable)
  hook.drops_closed_loop_noise = True
  return hook


def silence_abandoned_reads() -> None:
  """When one read of a damaged checkpoint fails, Orbax closes its event loop while
  TensorStore still completes the other reads; each then prints an "Event loop is
  closed" traceback through `sys.unraisablehook`, and the abandoned coroutines another
  when collected. Those (only those) are dropped."""
  if not getattr(sys.unraisablehook, 'drops_closed_loop_noise', False):
    sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)


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


def stored_tree(manager: ocp.CheckpointManager, epoch: int):
  """The stored tree's metadata (shapes and dtypes) of `epoch`; CheckpointError if unreadable."""
  where = os.path.join(manager.directory, str(epoch))
  silence_abandoned_reads()
  try:
    metadata = manager.item_metadata(epoch)
    found = getattr(metadata, 'tree', metadata)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{where}: unreadable checkpoint ({describe_error(e)})') from None
  if found is None:
    raise CheckpointError(f'{where}: unreadable checkpoint (no metadata)')
  return found


def restore_checked(manager: ocp.CheckpointManager, epoch: int, abstract_state,
                    found=None):
  """Restores `epoch` after checking the stored tree against `abstract_state`."""
  where = os.path.join(manager.directory, str(epoch))
  check_tree_matches(abstract_state, stored_tree(manager, epoch) if found is None else found,
                     where)
  try:
    return manager.restore(epoch, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f'{where}: cannot restore ({describe_error(e)})') from None


class Checkpoints:
  """The `latest/` and `best/` checkpoints of one workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._latest = ocp.CheckpointManager(
        os.path.join(self.directory, 'latest'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())
    self._best = ocp.CheckpointManager(
        os.path.join(self.directory, 'best'),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_epoch(self) -> int | None:
    return self._latest.latest_step()

  def save(self, epoch: int, state, is_best: bool) -> None:
    """Saves asynchronously into `latest/`, and into `best/` (replacing it) if `is_best`."""
    self._latest.save(epoch, args=ocp.args.StandardSave(state))
    if is_best:
      self._best.save(epoch, args=ocp.args.StandardSave(state))

  def restore_latest(self, abstract_state):
    """(state, epoch) of the newest complete checkpoint."""
    epoch = self.latest_epoch()
    if epoch is None:
      raise CheckpointError(f'{self.directory}/latest: no checkpoint')
    return restore_checked(self._latest, epoch, abstract_state), epoch

  def best_epoch(self) -> int | None:
    return self._best.latest_step()

  def restore_best(self, abstract_state):
    """(state, epoch) of the best checkpoint."""
    epoch = self.best_epoch()
    if epoch is None:
      raise CheckpointError(f'{self.directory}/best: no checkpoint')
    return restore_checked(self._best, epoch, abstract_state), epoch

  def close(self) -> None:
    """Waits for pending writes, then releases the managers."""
    for manager in (self._latest, self._best):
      manager.wait_until_finished()
      manager.close()
