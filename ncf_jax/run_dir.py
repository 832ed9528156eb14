"""A run folder (workdir): the one module that knows its layout and reads or writes its files.

  WORKDIR/config.json          the run's configuration (valid JSON)
  WORKDIR/metrics.jsonl        one JSON object per epoch, appended once its checkpoint is durable
  WORKDIR/checkpoints/latest/  one checkpoint per kept epoch: the last two and the best
  WORKDIR/run.lock             held (flock) by the one process that trains into the folder

One write per epoch: the best is the epoch metrics.jsonl names as best, whose checkpoint
the retention keeps (run folders of the first format also have `checkpoints/best/`, a
copy, which readers still use). metrics.jsonl is append-only: a record is appended
after its epoch's checkpoint is durable; a resume removes only records after the
checkpoint it resumes from; a line a crash cut short (the last, without its newline) is
the only repair. Each checkpoint holds its epoch's record too, so a record lost to a crash
between the save and the append is restored from it. The best-epoch rule: the
selection metric is validation HR when every record has it, else test HR (as
the original code does); the first epoch to reach the maximum wins. The target
rule (`target_record`): a run with `target_hr` set is finished at the first
trained epoch whose selection metric reaches it, as MLPerf's runs are.
"""

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import shutil
import time
from typing import Iterator

import ml_collections

from ncf_jax import checkpoints as checkpoints_lib
from ncf_jax.config_fields import computing_fields, flat_fields
from ncf_jax.data.files import atomic_write_text, make_dirs, remove_empty_dirs
from ncf_jax.errors import CheckpointError, WorkdirError

WORKDIRS = 'workdirs'  # default workdirs go under this folder of the current directory
CONFIG = 'config.json'
METRICS = 'metrics.jsonl'
CHECKPOINTS = 'checkpoints'
LOCK = 'run.lock'
KEEP_LATEST = 2  # a damaged newest checkpoint leaves the one before it to resume from
LEGACY_BEST = 'best'  # checkpoints/best/: the best epoch's copy in run folders of format 1


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, as the file itself sets it (no overrides)."""
  spec = importlib.util.spec_from_file_location('_ncf_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def run_identity(computing: dict) -> str:
  """A digest of what a run computes: of its config's `config_fields.computing_fields` (the
  data is checked by provenance.py). Every checkpoint carries it: one of another run is
  recognised as such."""
  fields = flat_fields(computing)
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def json_safe(value):
  """NaN/inf as null, NumPy scalars as plain numbers, so every line is strict JSON."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if hasattr(value, 'item'):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def selection_key(records: list[dict]) -> str:
  """'valid_hr' when every record has it (a run with a validation holdout), else 'hr'."""
  return 'valid_hr' if records and all('valid_hr' in r for r in records) else 'hr'


def best_record(records: list[dict]) -> dict:
  """The first record reaching the best selection metric."""
  key = selection_key(records)
  return max(records, key=lambda r: r[key])


def target_record(records: list[dict], target_hr: float) -> dict | None:
  """The first trained epoch's record whose selection metric is >= `target_hr` (MLPerf's
  rule: checked after each training epoch, not on the untrained model); None when
  `target_hr` is 0 (off) or no epoch reached it."""
  if not target_hr:
    return None
  key = selection_key(records)
  return next((r for r in records if r['epoch'] >= 1 and r[key] >= target_hr), None)


def is_improvement(record: dict, earlier: list[dict]) -> bool:
  """Whether `record` becomes the best: strictly above every earlier one (ties keep the first)."""
  key = selection_key([*earlier, record])
  return not earlier or record[key] > max(r[key] for r in earlier)


def _truncate(path: str, size: int) -> None:
  with open(path, 'r+b') as f:
    f.truncate(size)
    f.flush()
    os.fsync(f.fileno())


def _ends_with_newline(path: str) -> bool:
  with open(path, 'rb') as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b'\n'


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The files of one run folder. Reading takes no lock; `writer()` is for training."""
  path: str

  def __post_init__(self):
    object.__setattr__(self, 'path', os.path.abspath(self.path))

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  # config.json
  def read_config_json(self) -> dict:
    """config.json as the plain dict it holds; WorkdirError if missing or unreadable."""
    path = self.file(CONFIG)
    if not os.path.isfile(path):
      raise WorkdirError(f'{path}: missing (not a training workdir, or its run never started)')
    try:
      with open(path, encoding='utf-8') as f:
        saved = json.load(f)
    except (OSError, ValueError, TypeError) as e:
      raise WorkdirError(f'{path}: unreadable ({checkpoints_lib.describe_error(e)})') from None
    if not isinstance(saved, dict):
      raise WorkdirError(f'{path}: unreadable (a JSON {type(saved).__name__}, not an object)')
    return saved

  def read_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(self.read_config_json())

  def write_config(self, config: dict) -> None:
    """Writes config.json: `config` as the plain dict `run_settings.config_json` makes."""
    text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(self.file(CONFIG), text + '\n')

  # metrics.jsonl
  def _scan_metrics(self) -> tuple[list[dict], list[int], tuple[int, int] | None]:
    """(records, the byte offset after each record's line, (line number, offset) of a last
    line a crash cut short or None). A bad line elsewhere is a WorkdirError naming it."""
    path = self.file(METRICS)
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except FileNotFoundError:
      return [], [], None
    except OSError as e:
      raise WorkdirError(f'{path}: unreadable ({e.strerror or type(e).__name__})') from None
    records, ends, offset = [], [], 0
    lines = data.split(b'\n')
    for number, line in enumerate(lines, start=1):
      start, offset = offset, offset + len(line) + 1
      if not line.strip():
        continue
      last = number == len(lines)  # no newline after it
      try:
        record = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if last:
          return records, ends, (number, start)  # cut short by a crash mid-write
        raise WorkdirError(f'{path}:{number}: not a JSON record ({e})') from None
      if not isinstance(record, dict) or not isinstance(record.get('epoch'), int):
        raise WorkdirError(f'{path}:{number}: not a metrics record (no integer "epoch")')
      if records and record['epoch'] <= records[-1]['epoch']:
        raise WorkdirError(f'{path}:{number}: epoch {record["epoch"]} after epoch '
                           f'{records[-1]["epoch"]} (records are appended in epoch order)')
      records.append(record)
      ends.append(min(offset, len(data)))
    return records, ends, None

  def read_metrics(self) -> list[dict]:
    """The records, by epoch; a last line a crash cut short is left out. A bad line before
    it is a WorkdirError naming the file and line."""
    return self._scan_metrics()[0]

  def repair_metrics(self) -> str | None:
    """(The writer, before training.) Removes a last line a crash cut short, or ends a
    complete last line with its newline; a note saying so, or None."""
    path = self.file(METRICS)
    _, ends, torn = self._scan_metrics()
    if torn is not None:
      number, offset = torn
      size = os.path.getsize(path)
      _truncate(path, offset)
      return (f'note: {path}:{number}: removed a last line cut short by a crash '
              f'({size - offset} bytes)')
    if ends and ends[-1] == os.path.getsize(path) and not _ends_with_newline(path):
      with open(path, 'a', encoding='utf-8') as f:
        f.write('\n')
    return None

  def remove_metrics_after(self, epoch: int) -> list[int]:
    """(The writer.) Cuts metrics.jsonl after the record of `epoch`: the records of later
    epochs go (they are trained again), nothing before them changes. Their epochs."""
    records, ends, _ = self._scan_metrics()
    kept = [i for i, r in enumerate(records) if r['epoch'] <= epoch]
    removed = [r['epoch'] for r in records if r['epoch'] > epoch]
    if removed:
      _truncate(self.file(METRICS), ends[kept[-1]] if kept else 0)
    return removed

  def append_metrics(self, record: dict) -> dict:
    """Appends one record (made JSON-safe, which is also what is returned)."""
    record = json_safe(record)
    with open(self.file(METRICS), 'a', encoding='utf-8') as f:
      f.write(json.dumps(record, allow_nan=False) + '\n')
      f.flush()
      os.fsync(f.fileno())
    return record

  def is_finished(self, num_epochs: int, target_hr: float = 0.0) -> bool:
    """Whether the run logged its last epoch and its checkpoints hold that epoch and the
    best: epoch `num_epochs`, or the first to reach `target_hr` (0: no target) if that came
    sooner."""
    records = self.read_metrics()
    reached = target_record(records, target_hr)
    last = min(num_epochs, reached['epoch']) if reached else num_epochs
    if last not in [r['epoch'] for r in records]:
      return False
    latest = os.path.join(self.file(CHECKPOINTS), 'latest')
    best = best_record(records)['epoch']
    return os.path.isdir(os.path.join(latest, str(last))) and (
        os.path.isdir(os.path.join(latest, str(best)))
        or os.path.isdir(os.path.join(self.file(CHECKPOINTS), LEGACY_BEST, str(best))))

  # checkpoints
  def checkpoints(self, which: str = 'latest',
                  create: bool = False) -> checkpoints_lib.CheckpointDir:
    """The run's checkpoints (`latest`; `best` only in a run folder of format 1); `create`
    only for the writer (the lock holder)."""
    directory = os.path.join(self.file(CHECKPOINTS), which)
    if not create and not os.path.isdir(directory):
      raise CheckpointError(f'{directory}: no checkpoint')
    return checkpoints_lib.CheckpointDir(directory, writer=create)

  def best_epoch(self) -> int:
    """The best epoch by the records (CheckpointError if there are none)."""
    records = self.read_metrics()
    if not records:
      raise CheckpointError(f'{self.file(METRICS)}: no record (the run has not saved an epoch)')
    return best_record(records)['epoch']

  @contextlib.contextmanager
  def best_checkpoint(self) -> Iterator[tuple[checkpoints_lib.CheckpointDir, int]]:
    """(checkpoint directory, epoch) of the best epoch, whose checkpoint must be there."""
    epoch = self.best_epoch()
    for which in ('latest', LEGACY_BEST):
      directory = os.path.join(self.file(CHECKPOINTS), which)
      if os.path.isdir(os.path.join(directory, str(epoch))):
        found = checkpoints_lib.CheckpointDir(directory)
        try:
          if epoch in found.epochs():
            yield found, epoch
            return
        finally:
          found.close()
    raise CheckpointError(
        f'{os.path.join(self.file(CHECKPOINTS), "latest", str(epoch))}: missing: the checkpoint '
        f'of the best epoch ({epoch}, by {self.file(METRICS)})')

  def restore_best_params(self, abstract_params, shardings=None,
                          tables=()) -> tuple[object, int]:
    """(params, epoch) of the best checkpoint, parameters only (no optimizer state), onto
    one device or `shardings`, tables re-padded (`tables`: their TableSpecs); CheckpointError
    naming it if missing or damaged."""
    identity = (run_identity(computing_fields(self.read_config_json()))
                if os.path.isfile(self.file(CONFIG)) else None)
    with self.best_checkpoint() as (best, epoch):
      params, _ = best.restore_params(epoch, abstract_params, shardings, identity=identity,
                                      tables=tables)
      return params, epoch

  def stored_best_tree(self):
    """Shapes and dtypes of the best checkpoint's state (no arrays read)."""
    with self.best_checkpoint() as (best, epoch):
      return best.stored_tree(epoch)

  def move_aside(self) -> str | None:
    """Renames an existing run folder to `<path>.old-<time>` (never deletes it); its new
    path, or None when there was nothing to move. Refused while a run trains into it."""
    if not os.path.exists(self.path):
      return None
    with self.writer():  # fails at once if another run holds the folder
      target = f'{self.path}.old-{time.strftime("%Y%m%d-%H%M%S")}'
      suffix = 1
      while os.path.exists(target):
        target = f'{self.path}.old-{time.strftime("%Y%m%d-%H%M%S")}-{suffix}'
        suffix += 1
      os.rename(self.path, target)
    return target

  @contextlib.contextmanager
  def writer(self) -> Iterator['RunDir']:
    """Holds the folder's lock while a run trains into it.

    Creates the folder if needed. A second writer fails at once naming the holder's
    pid; the kernel drops the lock with its process, so a killed run leaves none
    behind. A folder this call created is removed again if the run fails before
    writing its first record.
    """
    created = not os.path.exists(self.path)
    existed = {name: os.path.exists(self.file(name)) for name in (CONFIG, METRICS, CHECKPOINTS,
                                                                   LOCK)}
    if not created and not os.path.isdir(self.path):
      raise WorkdirError(f'{self.path}: not a directory')
    try:
      made = make_dirs(self.path)  # with the parents it needed, removed with it if unused
      lock = open(self.file(LOCK), 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
    except OSError as e:
      raise WorkdirError(f'{self.path}: cannot use as a workdir '
                         f'({e.strerror or type(e).__name__})') from None
    locked = False
    try:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = True
      except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise
        lock.seek(0)
        holder = lock.read().strip() or 'unknown'
        raise WorkdirError(f'{self.path}: another run is training into this workdir '
                           f'(pid {holder}); wait for it to end or use another --workdir'
                           ) from None
      lock.seek(0)
      lock.truncate()
      lock.write(f'{os.getpid()}\n')
      lock.flush()
      yield self
    except BaseException:
      if locked:  # (a refused second writer touches nothing of the run holding the lock)
        self._remove_leftovers(created, existed)
        if created and not os.path.exists(self.path):
          remove_empty_dirs(made[:-1])
      raise
    finally:
      lock.close()

  def _remove_leftovers(self, created: bool, existed: dict) -> None:
    """After a run stopped before its first record: what it created goes (the folder, if it
    made it; else its config.json, checkpoints and lock), so nothing empty is left."""
    try:
      if self.read_metrics():
        return  # a record: the folder holds a run
    except WorkdirError:
      return
    if created:
      shutil.rmtree(self.path, ignore_errors=True)
      return
    for name, was_there in existed.items():
      path = self.file(name)
      if name == METRICS and os.path.isfile(path) and os.path.getsize(path) == 0:
        was_there = False  # an empty log says nothing
      if not was_there and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      elif not was_there and os.path.exists(path):
        os.unlink(path)

