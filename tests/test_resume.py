"""Resuming: interrupted runs (cleanly or by SIGKILL) end where uninterrupted ones do;
checkpoints that do not fit or are damaged fail in one line naming the path. The runs that
are killed or interrupted are processes of their own; the commands that resume them, or are
refused, run in this process (`run_entry`)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, error_lines, numbers as _numbers, read_records as _records
from conftest import make_config as _config, run_entry, train_quietly as _train
from ncf_jax import run_dir
from ncf_jax import trained_run
from ncf_jax import train
from ncf_jax.errors import CheckpointError, ConfigError, NonFiniteError

# Large enough that an epoch takes a while (~780 steps of batch 64, about a second) and a
# kill sent when epoch 1's record appears lands inside epoch 2 (or epoch 1's save).
BIG = dict(num_users=1000, num_items=200, interactions_per_user=10)
BIG_FLAGS = {'batch_size': 64, 'steps_per_dispatch': 32, 'num_epochs': 3}


def _cli_args(workdir, *extra):
  return ['--config=configs/test.py', f'--workdir={workdir}', *extra]


def _big_args(workdir, *extra):
  return _cli_args(workdir, *[f'--config.synthetic.{k}={v}' for k, v in BIG.items()],
                   *[f'--config.{k}={v}' for k, v in BIG_FLAGS.items()], *extra)


def _big_cli(workdir):
  return [sys.executable, '-m', 'ncf_jax.main', *_big_args(workdir)]


def _env():
  return dict(os.environ, JAX_NUMPY_RANK_PROMOTION='raise')


def _snapshot(directory):
  """Every file and directory under `directory` with its size and modification time."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      if name == run_dir.LOCK:
        continue  # each start writes its pid into the lock file
      path = os.path.join(root, name)
      stat = os.stat(path)
      out[os.path.relpath(path, directory)] = (stat.st_size if name in files else None,
                                               stat.st_mtime_ns)
  return out


def test_stop_and_rerun_matches_one_run(tmp_path):
  _train(_config(num_epochs=3), tmp_path / 'straight')
  _train(_config(num_epochs=1), tmp_path / 'split')
  _train(_config(num_epochs=3), tmp_path / 'split')
  straight, split = _numbers(tmp_path / 'straight'), _numbers(tmp_path / 'split')
  assert [r[0] for r in split] == [0, 1, 2, 3]  # each epoch once
  assert split == straight
  # A rerun of a finished run trains nothing and keeps the log as it is.
  _train(_config(num_epochs=3), tmp_path / 'split')
  assert _numbers(tmp_path / 'split') == straight


@pytest.fixture(scope='module')
def big_reference(tmp_path_factory):
  """What an uninterrupted run of the big config computes."""
  workdir = tmp_path_factory.mktemp('big') / 'straight'
  _train(_config(synthetic=BIG, **BIG_FLAGS), workdir)
  return _numbers(workdir)


def _start_and_wait_for_epoch_1(workdir, *extra):
  """The big run in a subprocess, once it has logged epoch 1 (so it is inside epoch 2)."""
  process = subprocess.Popen(_big_cli(workdir) + list(extra), cwd=ROOT, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if any(r['epoch'] >= 1 for r in _records(workdir)):
      break
    time.sleep(0.02)
  assert process.poll() is None, f'finished before it was stopped: {process.communicate()}'
  return process


def _no_half_written_checkpoints(workdir):
  for which in ('latest',):
    leftovers = [n for n in os.listdir(workdir / 'checkpoints' / which) if 'tmp' in n]
    assert not leftovers, leftovers


def test_sigkill_mid_epoch_then_restart_matches_uninterrupted_run(tmp_path, big_reference):
  killed = tmp_path / 'killed'
  process = _start_and_wait_for_epoch_1(killed)
  process.send_signal(signal.SIGKILL)  # inside epoch 2's training (or epoch 1's save)
  process.communicate()
  assert max(r['epoch'] for r in _records(killed)) < BIG_FLAGS['num_epochs']
  restarted = run_entry('ncf_jax.main', *_big_args(killed))
  assert restarted.returncode == 0, restarted.stderr
  assert 'resuming after epoch' in restarted.stdout
  assert _numbers(killed) == big_reference


def test_one_writer_per_workdir_and_a_killed_writer_leaves_no_lock(tmp_path):
  workdir = tmp_path / 'run'
  first = _start_and_wait_for_epoch_1(workdir, '--config.num_epochs=100000')
  try:
    second = run_entry('ncf_jax.main', *_big_args(workdir))
    assert error_lines(second) == [
        f'error: {workdir}: another run is training into this workdir (pid {first.pid}); '
        'wait for it to end or use another --workdir']
    assert first.poll() is None  # the refused writer touched nothing of the first run
  finally:
    first.send_signal(signal.SIGKILL)
    first.communicate()
  epochs = [r['epoch'] for r in _records(workdir)]
  assert epochs == list(range(len(epochs)))  # one writer: each epoch once, in order
  again = run_entry('ncf_jax.main', *_big_args(workdir, '--config.num_epochs=1'))
  assert again.returncode == 0, again.stderr
  assert 'resuming after epoch' in again.stdout


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_interrupt_ends_in_one_line_and_the_same_command_resumes(tmp_path, big_reference, sig):
  workdir = tmp_path / 'run'
  process = _start_and_wait_for_epoch_1(workdir)
  process.send_signal(sig)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 128 + sig, err
  assert 'Traceback' not in err
  name = 'SIGTERM' if sig == signal.SIGTERM else 'Ctrl-C'
  assert err.strip().splitlines()[-1] == (f'error: interrupted ({name}); the same command '
                                          'resumes after the last saved epoch')
  _no_half_written_checkpoints(workdir)
  restarted = run_entry('ncf_jax.main', *_big_args(workdir))
  assert restarted.returncode == 0, restarted.stderr
  assert _numbers(workdir) == big_reference


def test_checkpoint_of_another_shape_fails_in_one_line_and_leaves_workdir(tmp_path):
  workdir = tmp_path / 'run'
  _train(_config(model='gmf', num_epochs=1), workdir)
  before = _snapshot(workdir)
  with pytest.raises(ConfigError) as e:  # refused on its config before any checkpoint is read
    _train(_config(model='gmf', num_epochs=1, num_factors=4), workdir)
  assert str(e.value) == (f'{workdir}: the run there was trained with num_factors=8, this '
                          'command has 4; --restart to start over, or another --workdir')
  assert _snapshot(workdir) == before


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 1-epoch run and the same run extended to 2 epochs, undamaged."""
  root = tmp_path_factory.mktemp('trained')
  _train(_config(num_epochs=1), root / 'run')
  shutil.copytree(root / 'run', root / 'extended')
  _train(_config(num_epochs=2), root / 'extended')
  return root / 'run', _numbers(root / 'extended')


def _flip_bytes(path, count, seed=0):
  data = bytearray(path.read_bytes())
  for i in np.random.default_rng(seed).choice(len(data), min(count, len(data)), replace=False):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def _damage(checkpoint, how, every_file=False):
  """Damages a checkpoint; bytes are flipped in its largest data file (the tables and their
  moments) or, with `every_file`, in each (a reader restores the params alone, which need
  not share a file with the moments)."""
  state = checkpoint / 'state'
  data = sorted((state / 'ocdbt.process_0' / 'd').iterdir(), key=lambda p: p.stat().st_size)
  if how == 'metadata removed':
    (state / '_METADATA').unlink()
  elif how == 'data removed':
    for path in data:
      path.unlink()
  else:
    for path in (data if every_file else data[-1:]):
      _flip_bytes(path, {'1000 bytes flipped': 1000, '8 bytes flipped': 8}[how])


DAMAGE = ['metadata removed', 'data removed', '1000 bytes flipped', '8 bytes flipped']


@pytest.mark.parametrize('how', DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(trained, tmp_path, capfd, how):
  run, extended = trained
  workdir = tmp_path / 'run'
  shutil.copytree(run, workdir)
  _damage(workdir / 'checkpoints' / 'latest' / '1', how)
  state, history = train.train_and_evaluate(_config(num_epochs=2), str(workdir))
  out, err = capfd.readouterr()
  assert f'note: {workdir}/checkpoints/latest/1: ' in out
  assert 'resuming after epoch 0' in out
  assert 'Traceback' not in err  # no noise from the reads Orbax abandoned
  assert _numbers(workdir) == extended  # epoch 1 retrained exactly as before


@pytest.mark.parametrize('how', DAMAGE)
def test_damaged_best_checkpoint_is_a_one_line_error_naming_it(trained, tmp_path, how):
  run, _ = trained
  workdir = tmp_path / 'run'
  shutil.copytree(run, workdir)
  best = run_dir.RunDir(str(workdir)).best_epoch()
  _damage(workdir / 'checkpoints' / 'latest' / str(best), how, every_file=True)
  with pytest.raises(CheckpointError, match=f'^{workdir}/checkpoints/latest/{best}: '):
    trained_run.load_best(str(workdir))
  if how == DAMAGE[0]:  # the command's one line and exit code, once
    errors = error_lines(run_entry('ncf_jax.recommend', f'--workdir={workdir}', '--user=1'))
    assert len(errors) == 1 and f'checkpoints/latest/{best}: ' in errors[0]


def test_diverged_run_stops_saves_nothing_nonfinite_and_resumes_with_a_smaller_rate(tmp_path):
  diverging = _config(optimizer='sgd', learning_rate=1000.0)
  with pytest.raises(NonFiniteError, match=r'epoch 1: training diverged.*learning_rate=1000'):
    _train(diverging, tmp_path)
  assert [r['epoch'] for r in _records(tmp_path)] == [0]  # epoch 1 was neither logged nor saved
  assert sorted(os.listdir(tmp_path / 'checkpoints' / 'latest')) == ['0']
  _, history = _train(_config(optimizer='sgd', learning_rate=0.1), tmp_path)
  assert [r['epoch'] for r in history] == [0, 1, 2]
  assert all(r['loss'] is None or r['loss'] < 1.0 for r in history)


def test_diverged_run_is_one_line_and_a_nonzero_exit(tmp_path):
  done = run_entry('ncf_jax.main', *_cli_args(tmp_path, '--config.optimizer=sgd',
                                              '--config.learning_rate=1000'))
  errors = error_lines(done)
  assert len(errors) == 1 and errors[0].startswith('error: epoch 1: training diverged')


@pytest.mark.parametrize('value', ['nan', 'inf', '-inf'])
def test_non_finite_config_numbers_are_refused(tmp_path, value):
  with pytest.raises(ConfigError, match=f'config.learning_rate={value}: must be a finite'):
    _train(_config(learning_rate=float(value)), tmp_path)
