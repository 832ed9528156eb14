"""The command line as users type it: the bare command and its default workdir, resuming,
--restart, configs found from any directory, and one-line errors. Two commands run as a
process of their own (exit codes and printed lines as a user meets them); the rest run the
same entry point in this process (`run_entry`)."""

import json
import os
import re

import pytest

from conftest import ROOT, error_lines, make_config, read_records, run_entry, run_module
from conftest import train_quietly
from ncf_jax import cli
from ncf_jax import workdir_flags
from ncf_jax.errors import NcfError, WorkdirError

CONFIG = '--config=configs/test.py'


def _main(*args, cwd=ROOT):
  """The command in this process."""
  return run_entry('ncf_jax.main', *args, cwd=cwd)


def test_test_config_run_writes_metrics(tmp_path):
  result = _main(CONFIG, f'--workdir={tmp_path}', '--config.num_epochs=1')
  assert result.returncode == 0, result.stderr
  assert [r['epoch'] for r in read_records(tmp_path)] == [0, 1]
  assert 'best epoch' in result.stdout
  assert json.loads((tmp_path / 'config.json').read_text())['num_epochs'] == 1


def _default_dirs(cwd):
  workdirs = cwd / 'workdirs'
  return sorted(os.listdir(workdirs)) if workdirs.is_dir() else []


def test_bare_command_uses_the_default_workdir_and_resumes(tmp_path):
  # From a directory without configs/: the shipped configs/test.py is used. As a user runs
  # it, in a process of its own: exit code 0 and what it prints.
  first = run_module('ncf_jax.main', CONFIG, cwd=tmp_path)
  assert first.returncode == 0, first.stderr
  workdir = tmp_path / 'workdirs' / 'test'
  assert first.stdout.splitlines()[0].startswith(f'workdir: {workdir} ')
  assert [r['epoch'] for r in read_records(workdir)] == [0, 1, 2]
  again = _main(CONFIG, cwd=tmp_path)
  assert again.returncode == 0, again.stderr
  assert 'resuming after epoch 2' in again.stdout
  # num_epochs does not change what is computed: the same run is extended.
  longer = _main(CONFIG, '--config.num_epochs=3', cwd=tmp_path)
  assert longer.returncode == 0, longer.stderr
  assert 'resuming after epoch 2' in longer.stdout
  assert [r['epoch'] for r in read_records(workdir)] == [0, 1, 2, 3]
  # An override that changes the run: a folder of its own, named by a digest.
  other = _main(CONFIG, '--config.learning_rate=0.002', '--config.num_epochs=1', cwd=tmp_path)
  assert other.returncode == 0, other.stderr
  digest_dir = workdir_flags.default_workdir(cli.shipped_config('configs/test.py'),
                                             make_config(learning_rate=0.002), cwd=str(tmp_path))
  assert other.stdout.splitlines()[0].startswith(f'workdir: {digest_dir} ')
  assert _default_dirs(tmp_path) == ['test', os.path.basename(digest_dir)]


def test_default_workdir_names_differ_exactly_when_the_computation_does(tmp_path):
  config_file = cli.shipped_config('configs/test.py')
  name = lambda **overrides: os.path.basename(workdir_flags.default_workdir(
      config_file, make_config(**overrides), cwd=str(tmp_path)))
  assert name() == 'test'
  assert name(num_epochs=7, log_every_seconds=3.0, steps_per_dispatch=2) == 'test'
  assert name(learning_rate=0.001) == 'test'  # the config file's own value
  changed = [name(learning_rate=0.002), name(num_factors=4), name(data_dir='/data/ml-1m'),
             name(synthetic=dict(num_users=100)), name(learning_rate=0.002, num_factors=4)]
  assert len(set(changed)) == len(changed)
  assert all(n.startswith('test-') and len(n) == len('test-') + 8 for n in changed)
  assert name(learning_rate=0.002) == changed[0]  # stable


def test_restart_moves_the_old_run_aside(tmp_path):
  assert _main(CONFIG, '--config.num_epochs=1', cwd=tmp_path).returncode == 0
  result = _main(CONFIG, '--config.num_epochs=1', '--restart', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert 'resuming' not in result.stdout and 'moved to' in result.stdout
  names = _default_dirs(tmp_path)
  assert len(names) == 2 and names[0] == 'test' and names[1].startswith('test.old-')
  for name in names:
    assert [r['epoch'] for r in read_records(tmp_path / 'workdirs' / name)] == [0, 1]


@pytest.mark.parametrize('args,expected', [
    (['--config.num_factor=16'], 'num_factor'),
    (['--config.num_factors=8.5'], 'num_factors'),
])
def test_bad_config_flag_fails_in_one_line(tmp_path, args, expected):
  # Flag parsing is the command's own (absl and ml_collections): the first case as a user
  # meets it, in a process of its own (exit code 2, one line, nothing else on stderr).
  if args == ['--config.num_factor=16']:
    result = run_module('ncf_jax.main', CONFIG, f'--workdir={tmp_path / "run"}', *args)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
  else:
    result = _main(CONFIG, f'--workdir={tmp_path / "run"}', *args)
  errors = error_lines(result)
  assert len(errors) == 1 and expected in errors[0], result.stderr
  assert not (tmp_path / 'run').exists()  # a failed start leaves nothing behind
  if args == ['--config.num_factor=16']:
    assert 'Did you mean "num_factors"' in errors[0]


@pytest.mark.parametrize('overrides,expected', [
    (dict(model='transformer'), 'config.model'),
    (dict(batch_size=0), 'config.batch_size'),
    (dict(learning_rate=float('nan')), 'config.learning_rate=nan: must be a finite number'),
    (dict(top_k=31), 'config.top_k=31: must be smaller than the number of candidates'),
])
def test_bad_config_value_is_one_error_and_leaves_nothing(tmp_path, overrides, expected):
  # In-process: the command prints any NcfError as one line (test_bad_config_flag_...).
  with pytest.raises(NcfError, match=re.escape(expected)) as e:
    train_quietly(make_config(**overrides), tmp_path / 'run')
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'run').exists()


def test_stray_positional_argument_is_a_usage_error(tmp_path):
  result = _main(CONFIG, f'--workdir={tmp_path}', '--config.validation', 'True')
  assert result.returncode != 0
  assert 'unexpected arguments' in result.stderr
  assert not (tmp_path / 'metrics.jsonl').exists()


@pytest.mark.parametrize('make,expected', [
    (lambda p: (p / 'file').write_text('x') and p / 'file', 'not a directory'),
    (lambda p: '/proc/ncf-jax-test/run', 'cannot use as a workdir'),
])
def test_unusable_workdir_is_one_line(tmp_path, make, expected):
  workdir = make(tmp_path)
  with pytest.raises(WorkdirError) as e:
    train_quietly(make_config(), workdir)
  assert expected in str(e.value) and str(workdir) in str(e.value) and '\n' not in str(e.value)
