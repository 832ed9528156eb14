"""Faults in a run folder: failed saves (full disk, permissions), a damaged metrics.jsonl,
checkpoints that are not what their folder says, vanished checkpoint folders, and what a run
that stops before its first record leaves behind."""

import errno
import json
import os
import shutil

import pytest

from conftest import ROOT, error_lines, make_config, numbers, read_records
from conftest import train_quietly
from ncf_jax import config_fields
from ncf_jax import run_dir
from ncf_jax import run_settings
from ncf_jax import trained_run
from ncf_jax import train
from ncf_jax.errors import (CheckpointError, CheckpointSaveError, ConfigError,
                            DamagedCheckpointError, WorkdirError)
from orbax.checkpoint._src.serialization import serialization

EPOCHS = 3
# The tests' own data here: on it, epoch 2 is the best of epochs 0-3 (see `finished`).
DATA_SEED = 9


def _config(**overrides):
  return make_config(synthetic=dict(seed=DATA_SEED), **overrides)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished 3-epoch run (copied by the tests that damage it) and its numbers."""
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  train_quietly(_config(num_epochs=EPOCHS), workdir)
  hr = [r[3] for r in numbers(workdir)]
  # Tests below drop the newest checkpoint and resume from the one before it: the run goes
  # on only if that epoch is the best of the records left (an older best's checkpoint is
  # gone: only the last 2 and the best are kept). Another makes the best vanish, which
  # must then not be the newest epoch.
  assert hr.index(max(hr)) == EPOCHS - 1, hr
  return workdir, numbers(workdir)


def _copy(finished, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(finished[0], workdir)
  return workdir


def _tmp_folders(workdir):
  return [os.path.join(root, d) for root, dirs, _ in os.walk(workdir) for d in dirs
          if 'orbax-checkpoint-tmp' in d]


def _fail_writes_of_epoch(monkeypatch, epoch, error):
  """Tensorstore writes of `epoch`'s checkpoint raise `error` (what a full disk gives)."""
  original = serialization.async_serialize_from_host

  async def failing(rslices, tensorstore_spec, *args, **kwargs):
    if f'/{epoch}.orbax-checkpoint-tmp' in json.dumps(tensorstore_spec, default=str):
      raise error
    return await original(rslices, tensorstore_spec, *args, **kwargs)

  monkeypatch.setattr(serialization, 'async_serialize_from_host', failing)


# Saves

def test_a_full_disk_at_a_save_stops_naming_path_and_epoch_and_the_rerun_resumes(
    tmp_path, monkeypatch, finished, capfd):
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    _fail_writes_of_epoch(patch, 2, OSError(errno.ENOSPC, 'No space left on device'))
    with pytest.raises(CheckpointSaveError) as raised:
      train_quietly(_config(num_epochs=EPOCHS), workdir)
  assert str(raised.value) == (f'{workdir}/checkpoints/latest/2: cannot save epoch 2 '
                               '(No space left on device)')
  assert 'Traceback' not in capfd.readouterr().err  # Orbax's logged tracebacks are dropped
  # Nothing after the last durable checkpoint is recorded, nothing half-written is left.
  assert [r['epoch'] for r in read_records(workdir)] == [0, 1]
  assert not _tmp_folders(workdir)
  assert '2' not in os.listdir(workdir / 'checkpoints' / 'latest')
  train_quietly(_config(num_epochs=EPOCHS), workdir)
  assert numbers(workdir) == finished[1]


def test_a_refused_write_fails_the_same_way_at_the_first_save(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  _fail_writes_of_epoch(monkeypatch, 0, PermissionError(errno.EACCES, 'Permission denied'))
  with pytest.raises(CheckpointSaveError, match=r'/checkpoints/latest/0: cannot save epoch 0 '
                                                r'\(Permission denied\)$'):
    train_quietly(_config(num_epochs=1), workdir)
  assert not workdir.exists()  # stopped before its first record: nothing is left


_FULL_DISK_MAIN = '''
import errno, json, runpy, sys
from orbax.checkpoint._src.serialization import serialization
original = serialization.async_serialize_from_host
async def failing(rslices, spec, *args, **kwargs):
  if '/1.orbax-checkpoint-tmp' in json.dumps(spec, default=str):
    raise ValueError('RESOURCE_EXHAUSTED: Error writing local file: No space left on device '
                     '[tensorstore_spec={}]')
  return await original(rslices, spec, *args, **kwargs)
serialization.async_serialize_from_host = failing
sys.argv = ['ncf_jax.main'] + sys.argv[1:]
runpy.run_module('ncf_jax.main', run_name='__main__')
'''


def test_a_full_disk_in_the_command_is_one_line_and_exit_1(tmp_path):
  script = tmp_path / 'full_disk_main.py'
  script.write_text(_FULL_DISK_MAIN)
  workdir = tmp_path / 'run'
  import subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  result = subprocess.run(
      [sys.executable, str(script), '--config=configs/test.py', '--config.num_epochs=2',
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_NUMPY_RANK_PROMOTION='raise'), check=False)
  assert result.returncode == 1, result.stderr
  assert error_lines(result) == [
      f'error: {workdir}/checkpoints/latest/1: cannot save epoch 1 (ValueError: '
      'RESOURCE_EXHAUSTED: Error writing local file: No space left on device)']
  assert result.stderr.strip().splitlines() == error_lines(result)  # nothing else
  assert [r['epoch'] for r in read_records(workdir)] == [0]
  assert not _tmp_folders(workdir)


# metrics.jsonl

def test_a_bad_line_in_the_middle_is_one_error_naming_it_and_nothing_changes(tmp_path, finished):
  workdir = _copy(finished, tmp_path)
  metrics = workdir / run_dir.METRICS
  lines = metrics.read_text().splitlines(keepends=True)
  lines[1] = lines[1][:20] + '\n'
  metrics.write_text(''.join(lines))
  before = metrics.read_bytes()
  with pytest.raises(WorkdirError, match=f'^{metrics}:2: not a JSON record'):
    train_quietly(_config(num_epochs=EPOCHS + 1), workdir)
  assert metrics.read_bytes() == before


def test_a_torn_last_line_is_repaired_with_a_note_and_its_record_restored_from_the_checkpoint(
    tmp_path, finished, capsys):
  workdir = _copy(finished, tmp_path)
  metrics = workdir / run_dir.METRICS
  text = metrics.read_text()
  last = text.rstrip('\n').rsplit('\n', 1)[1]
  metrics.write_text(text[:len(text) - len(last) - 1] + last[:len(last) // 2])  # crash mid-write
  train.train_and_evaluate(_config(num_epochs=EPOCHS), str(workdir))
  out = capsys.readouterr().out
  assert f'note: {metrics}:{EPOCHS + 1}: removed a last line cut short by a crash' in out
  assert (f'note: {metrics}: the record of epoch {EPOCHS} was missing (the run stopped after '
          'its checkpoint was saved); restored from the checkpoint') in out
  assert metrics.read_text() == text  # the very record, timings included: not re-evaluated


def test_a_fallback_removes_only_records_after_the_checkpoint_it_resumes_from(
    tmp_path, finished, capsys):
  workdir = _copy(finished, tmp_path)
  metrics = workdir / run_dir.METRICS
  before = metrics.read_bytes()
  shutil.rmtree(workdir / 'checkpoints' / 'latest' / str(EPOCHS))
  train.train_and_evaluate(_config(num_epochs=EPOCHS), str(workdir))
  out = capsys.readouterr().out
  assert f'note: {metrics}: records of epoch(s) {EPOCHS} removed' in out
  after = metrics.read_bytes()
  kept = before[:before.rstrip(b'\n').rindex(b'\n') + 1]
  assert after.startswith(kept)  # the records before it are the same bytes
  assert numbers(workdir) == finished[1]  # the epoch was trained again, identically


# Checkpoint identity

def test_a_checkpoint_holding_another_epoch_than_its_folder_is_passed_over(
    tmp_path, finished, capsys):
  workdir = _copy(finished, tmp_path)
  latest = workdir / 'checkpoints' / 'latest'
  shutil.rmtree(latest / str(EPOCHS))
  shutil.copytree(latest / str(EPOCHS - 1), latest / str(EPOCHS))  # epoch 2 under the name 3
  train.train_and_evaluate(_config(num_epochs=EPOCHS), str(workdir))
  out = capsys.readouterr().out
  assert (f'note: {latest}/{EPOCHS}: holds epoch {EPOCHS - 1}, not {EPOCHS} (checkpoint folders '
          'renamed or swapped); resuming from the checkpoint before it') in out
  assert numbers(workdir) == finished[1]


def test_swapped_checkpoint_folders_are_damaged_and_with_none_left_one_line(tmp_path, finished):
  workdir = _copy(finished, tmp_path)
  latest = workdir / 'checkpoints' / 'latest'
  kept = sorted(int(n) for n in os.listdir(latest))
  assert kept[-2:] == [EPOCHS - 1, EPOCHS]
  for epoch in kept[:-2]:
    shutil.rmtree(latest / str(epoch))  # only the two swapped ones remain
  os.rename(latest / str(EPOCHS), latest / 'x')
  os.rename(latest / str(EPOCHS - 1), latest / str(EPOCHS))
  os.rename(latest / 'x', latest / str(EPOCHS - 1))
  with pytest.raises(DamagedCheckpointError,
                     match=f'^{latest}/{EPOCHS - 1}: holds epoch {EPOCHS}, not {EPOCHS - 1}'):
    train_quietly(_config(num_epochs=EPOCHS + 1), workdir)


def test_a_checkpoint_of_another_run_is_passed_over(tmp_path, finished, capsys):
  other = tmp_path / 'other'
  train_quietly(_config(num_epochs=1, learning_rate=0.002), other)
  workdir = _copy(finished, tmp_path)
  latest = workdir / 'checkpoints' / 'latest'
  shutil.rmtree(latest / str(EPOCHS))
  shutil.copytree(other / 'checkpoints' / 'latest' / '1', latest / str(EPOCHS))
  # The other run's epoch 1 renamed to this run's newest: epoch matches nothing, identity not.
  meta = latest / str(EPOCHS) / 'meta' / 'metadata'
  record = json.loads(meta.read_text())
  record['epoch'] = EPOCHS
  meta.write_text(json.dumps(record))
  train.train_and_evaluate(_config(num_epochs=EPOCHS), str(workdir))
  assert f'note: {latest}/{EPOCHS}: a checkpoint of another run' in capsys.readouterr().out
  assert numbers(workdir) == finished[1]


# Vanished checkpoint folders

def test_without_latest_the_run_refuses_in_one_line_and_rewrites_nothing(tmp_path, finished):
  workdir = _copy(finished, tmp_path)
  shutil.rmtree(workdir / 'checkpoints' / 'latest')
  before = (workdir / run_dir.METRICS).read_bytes()
  with pytest.raises(CheckpointError, match=(
      f'^{workdir}/checkpoints/latest: no checkpoint, but {workdir}/metrics.jsonl records '
      f'epochs 0..{EPOCHS}; put the checkpoints back, or start over with --restart$')):
    train_quietly(_config(num_epochs=EPOCHS), workdir)
  assert (workdir / run_dir.METRICS).read_bytes() == before


def test_a_vanished_best_checkpoint_is_not_finished_and_is_one_line(tmp_path, finished):
  workdir = _copy(finished, tmp_path)
  run = run_dir.RunDir(str(workdir))
  best = run.best_epoch()
  assert run.is_finished(EPOCHS)
  # Which epoch is best is the data's business: make the best an older, vanished one.
  if best == EPOCHS:
    pytest.skip('the best is the newest epoch here: its loss is covered by the fallback test')
  shutil.rmtree(workdir / 'checkpoints' / 'latest' / str(best))
  assert not run.is_finished(EPOCHS)  # a pipeline does not skip it
  message = (f'^{workdir}/checkpoints/latest/{best}: missing: the checkpoint of the best epoch '
             f'\\({best}, by {workdir}/metrics.jsonl\\)')
  with pytest.raises(CheckpointError, match=message):
    train_quietly(_config(num_epochs=EPOCHS), workdir)
  with pytest.raises(CheckpointError, match=message):
    trained_run.load_best(str(workdir))


# Leftovers

def _stop_before_the_first_record(monkeypatch):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(train, 'evaluate', interrupted)


def test_a_run_stopped_before_its_first_record_leaves_no_folder(tmp_path, monkeypatch):
  _stop_before_the_first_record(monkeypatch)
  with pytest.raises(KeyboardInterrupt):
    train_quietly(_config(num_epochs=1), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_a_run_stopped_before_its_first_record_leaves_an_existing_folder_as_it_was(
    tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine')
  _stop_before_the_first_record(monkeypatch)
  with pytest.raises(KeyboardInterrupt):
    train_quietly(_config(num_epochs=1), workdir)
  assert os.listdir(workdir) == ['notes.txt']


def test_a_failed_pretrained_merge_leaves_no_run_folder(tmp_path):
  config = _config(model='neumf', num_epochs=1)
  with config.unlocked():
    config.gmf_workdir = str(tmp_path / 'no_gmf')
    config.mlp_workdir = str(tmp_path / 'no_mlp')
    config.alpha = 0.5
  with pytest.raises((WorkdirError, CheckpointError, ConfigError)):
    train_quietly(config, tmp_path / 'neumf')
  assert not (tmp_path / 'neumf').exists()


def test_run_identity_follows_the_computing_fields_only():
  identity = lambda config: run_dir.run_identity(
      config_fields.computing_fields(run_settings.config_json(config)))
  base = identity(_config())
  assert identity(_config(num_epochs=9)) == base
  assert identity(_config(learning_rate=0.5)) != base
  with_fingerprint = dict(run_settings.config_json(_config()), data_fingerprint='abc')
  assert run_dir.run_identity(config_fields.computing_fields(with_fingerprint)) != base


def test_a_stopped_first_run_removes_the_parent_folders_it_made(tmp_path, monkeypatch):
  _stop_before_the_first_record(monkeypatch)
  with pytest.raises(KeyboardInterrupt):
    train_quietly(_config(num_epochs=1), tmp_path / 'pipeline' / 'gmf')
  assert os.listdir(tmp_path) == []


def test_without_metrics_the_run_refuses_in_one_line_and_keeps_the_checkpoints(
    tmp_path, finished):
  workdir = _copy(finished, tmp_path)
  os.unlink(workdir / run_dir.METRICS)
  kept = sorted(os.listdir(workdir / 'checkpoints' / 'latest'))
  with pytest.raises(CheckpointError, match=f'^{workdir}/metrics.jsonl: no records, but '
                                            f'{workdir}/checkpoints/latest holds epochs '):
    train_quietly(_config(num_epochs=EPOCHS), workdir)
  assert sorted(os.listdir(workdir / 'checkpoints' / 'latest')) == kept
  assert not (workdir / run_dir.METRICS).exists()


def test_a_crash_between_the_first_save_and_its_record_resumes_from_it(tmp_path, capsys):
  workdir = tmp_path / 'run'
  train_quietly(_config(num_epochs=1), workdir)
  straight = numbers(workdir)
  shutil.rmtree(workdir / 'checkpoints' / 'latest' / '1')
  (workdir / run_dir.METRICS).write_text('')  # epoch 0 durable, its record never appended
  train.train_and_evaluate(_config(num_epochs=1), str(workdir))
  assert 'the record of epoch 0 was missing' in capsys.readouterr().out
  assert numbers(workdir) == straight
