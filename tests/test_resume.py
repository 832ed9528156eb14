"""Resuming: interrupted runs (cleanly or by SIGKILL) end where uninterrupted ones do;
checkpoints that do not fit or are damaged fail in one line naming the path."""

import contextlib
import gc
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from ncf_jax.configs import test as test_config
from ncf_jax import train
from ncf_jax.errors import CheckpointError, ConfigError, NonFiniteError

# Large enough that an epoch takes a while (~3000 steps of batch 64) and a
# kill lands inside one; small enough for seconds per epoch.
BIG = dict(num_users=2000, num_items=200, interactions_per_user=30)
BIG_FLAGS = {'batch_size': 64, 'steps_per_dispatch': 32, 'num_epochs': 3}


def _config(**overrides):
  config = test_config.get_config()
  for key, value in overrides.items():
    config[key] = value
  return config


def _cli(workdir, *extra):
  return [sys.executable, '-m', 'ncf_jax.main', '--config=configs/test.py', f'--workdir={workdir}',
          *extra]


def _big_cli(workdir):
  return _cli(workdir, *[f'--config.synthetic.{k}={v}' for k, v in BIG.items()],
              *[f'--config.{k}={v}' for k, v in BIG_FLAGS.items()])


def _env():
  return dict(os.environ, JAX_NUMPY_RANK_PROMOTION='raise')


def _train(config, workdir):
  with contextlib.redirect_stdout(io.StringIO()):
    return train.train_and_evaluate(config, str(workdir))


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _numbers(workdir):
  return [(r['epoch'], r['step'], r['loss'], r['hr'], r['ndcg']) for r in _records(workdir)]


def _snapshot(directory):
  """Every file and directory under `directory` with its size and modification time."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
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


def test_sigkill_mid_epoch_then_restart_matches_uninterrupted_run(tmp_path):
  killed, straight = tmp_path / 'killed', tmp_path / 'straight'
  env = _env()
  process = subprocess.Popen(_big_cli(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  # The uninterrupted reference runs meanwhile, on the other core, through the same
  # entry point (which picks the XLA runtime) as the killed run.
  reference = subprocess.Popen(_big_cli(straight), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
  try:
    try:
      deadline = time.time() + 120
      while time.time() < deadline and process.poll() is None:
        if os.path.exists(killed / 'metrics.jsonl') and any(
            r['epoch'] >= 1 for r in _records(killed)):
          break
        time.sleep(0.02)
      assert process.poll() is None, f'finished before it was killed: {process.stderr.read()}'
      process.send_signal(signal.SIGKILL)  # inside epoch 2's training (or epoch 1's save)
    finally:
      if process.poll() is None:
        process.kill()
      process.wait()
      process.stderr.close()
    assert max(r['epoch'] for r in _records(killed)) < BIG_FLAGS['num_epochs']

    restarted = subprocess.run(_big_cli(killed), cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=300, check=False)
    assert restarted.returncode == 0, restarted.stderr
    assert 'resuming after epoch' in restarted.stdout
    _, reference_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, reference_err
  finally:
    if reference.poll() is None:
      reference.kill()
      reference.communicate()
  assert [r[0] for r in _numbers(killed)] == list(range(BIG_FLAGS['num_epochs'] + 1))
  assert _numbers(killed) == _numbers(straight)


def test_checkpoint_of_another_shape_fails_in_one_line_and_leaves_workdir(tmp_path):
  workdir = tmp_path / 'run'
  _train(_config(model='gmf', num_epochs=1), workdir)
  before = _snapshot(workdir)
  result = subprocess.run(_cli(workdir, '--config.model=gmf', '--config.num_factors=4'),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert errors == [f'error: {workdir}/checkpoints/latest/1: parameter params/gmf/item_embedding '
                    'has shape (80, 8), expected (80, 4)'], result.stderr
  assert _snapshot(workdir) == before


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  _train(_config(num_epochs=1), workdir)
  return workdir


@pytest.mark.parametrize('damage', ['default/_METADATA', 'default/d', 'default/ocdbt.process_0/d'])
def test_damaged_checkpoint_fails_in_one_line(trained, tmp_path, capfd, damage):
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  target = workdir / 'checkpoints' / 'latest' / '1' / damage
  assert target.exists()
  if target.is_dir():
    for path in target.iterdir():  # the array data; the directory itself stays
      path.unlink()
  else:
    target.unlink()
  with pytest.raises(CheckpointError) as e:
    _train(_config(num_epochs=2), workdir)
  message = str(e.value)
  assert message.startswith(f'{workdir}/checkpoints/latest/1: ')
  assert '\n' not in message and len(message) < 600
  del e
  gc.collect()  # finalises the reads Orbax abandoned, while this test's hooks are installed
  assert 'Traceback' not in capfd.readouterr().err  # no noise from abandoned reads


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
  done = subprocess.run(_cli(tmp_path, '--config.optimizer=sgd', '--config.learning_rate=1000'),
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  assert done.stderr.strip().splitlines()[-1].startswith('error: epoch 1: training diverged')
  assert 'Traceback' not in done.stderr


@pytest.mark.parametrize('value', ['nan', 'inf', '-inf'])
def test_non_finite_config_numbers_are_refused(tmp_path, value):
  with pytest.raises(ConfigError, match=f'config.learning_rate={value}: must be a finite'):
    _train(_config(learning_rate=float(value)), tmp_path)
