"""Every command-line and config mistake is one line before any work, with nothing written
(issue 22, items 8, 12 and 13): the whole entry point runs in this process (`run_entry`, through
`cli.run_in_process`: flag parsing, config loading, validation, launch checks), with its flags
defined for the call and removed after it."""

import math
import os

import pytest

from conftest import ROOT, make_config, run_entry, run_module, train_quietly, free_port
from ncf_jax import cli
from ncf_jax import config_checks
from ncf_jax import ensemble
from ncf_jax import train
from ncf_jax.errors import ConfigError, NonFiniteError

CONFIG = os.path.join(ROOT, 'configs', 'test.py')


def run_main(*args: str) -> tuple[int, str | None]:
  """`python -m ncf_jax.main ARGS` in this process: (exit code, its one line)."""
  result = run_entry('ncf_jax.main', *args)
  return result.returncode, result.line


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
  """An empty current directory: nothing may appear in it (default workdirs go here)."""
  monkeypatch.chdir(tmp_path)
  return tmp_path


def _write(path, text: str) -> str:
  path.write_text(text)
  return str(path)


def _usage(message: str) -> str:
  return f'error: {message}; see --help'


def test_config_file_mistakes_are_one_usage_line(empty_cwd, tmp_path_factory):
  files = tmp_path_factory.mktemp('configs')
  syntax = _write(files / 'syntax.py', 'def get_config(:\n')
  as_dict = _write(files / 'as_dict.py', 'def get_config():\n  return {"seed": 1}\n')
  without = _write(files / 'without.py', 'SEED = 1\n')
  missing = str(files / 'missing.py')
  cases = {
      (f'--config={missing}', '--config.num_epochs=1'): f'--config={missing}: no such file',
      (f'--config={syntax}',): f'--config={syntax}: line 1: invalid syntax',
      (f'--config={as_dict}', '--config.seed=2'): f'--config={as_dict}: get_config() returned a '
                                                  'dict, not an ml_collections.ConfigDict',
      (f'--config={without}',): f'--config={without}: the file defines no get_config()',
      ('--config=configs/neumf.py:extra',): '--config=configs/neumf.py:extra: get_config '
          'failed: TypeError: get_config() takes 0 positional arguments but 1 was given',
      (f'--config={CONFIG}', '--config.nope=1'): "no such config field 'nope'",
      (f'--config={CONFIG}', 'extra'): 'unexpected arguments extra (write --flag=value, with =)',
      (f'--config={CONFIG}', '--bogus'): "Unknown command line flag 'bogus'",
      (): '--config is required',
  }
  for args, message in cases.items():
    assert run_main(*args, '--workdir=run') == (cli.USAGE_EXIT, _usage(message)), args
  assert sorted(os.listdir(empty_cwd)) == []


def test_space_form_of_config_finds_the_shipped_file_and_runs_its_checks(empty_cwd):
  # `--config configs/test.py` from a folder without configs/: the shipped file, and its
  # values checked before any folder exists.
  result = run_entry('ncf_jax.main', '--config', 'configs/test.py', '--config.seed=-1')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == ['error: config.seed=-1: must be >= 0']
  assert os.listdir(empty_cwd) == []


BAD_VALUES = {
    '--config.layers=abc': "config.layers=('abc',): must be a tuple of integer widths, e.g. "
                           '--config.layers="(64,32,16,8)" (empty: from num_factors)',
    '--config.synthetic.seed=-1': 'config.synthetic.seed=-1: must be >= 0',
    '--config.synthetic.num_users=0': 'config.synthetic.num_users=0: must be >= 1',
    '--config.synthetic.num_items=10': 'config.synthetic.num_items=10: must be >= 32 '
                                       '(num_test_negatives=30 + 2, and 2 x num_clusters=8)',
    '--config.synthetic.num_test_negatives=0': 'config.synthetic.num_test_negatives=0: must be '
                                               '>= 1',
    '--config.seed=-1': 'config.seed=-1: must be >= 0',
    '--config.adam_b1=5': 'config.adam_b1=5.0: must be in [0, 1) (a decay rate)',
    '--config.adam_b2=1': 'config.adam_b2=1.0: must be in [0, 1) (a decay rate)',
    '--config.adam_eps=0': 'config.adam_eps=0.0: must be positive',
    '--config.data_dir=/tmp': 'config.data_dir=/tmp: config.dataset=synthetic generates its data '
                              'and reads no folder; drop data_dir or pick a dataset',
    '--config.steps_per_dispatch=1000000000': (
        'config.steps_per_dispatch=1000000000: a compiled chunk of 1000000000 x batch_size 128 = '
        '128,000,000,000 examples is above 268,435,456 (16 bytes each, on the host and every '
        'device); lower steps_per_dispatch'),
}


@pytest.mark.parametrize('override', sorted(BAD_VALUES))
def test_bad_config_values_fail_before_any_folder(empty_cwd, override):
  # No --workdir: the default folder (workdirs/...) would appear in the current directory.
  assert run_main(f'--config={CONFIG}', override) == (1, f'error: {BAD_VALUES[override]}')
  assert os.listdir(empty_cwd) == []


def test_the_shipped_configs_pass_the_checks():
  from ncf_jax.configs import (default, gmf, mf, mlp, mlperf, neumf, neumf_fast,  # pylint: disable=g-import-not-at-top
                               neumf_pretrained, test)
  for module in (default, gmf, mf, mlp, mlperf, neumf, neumf_fast, neumf_pretrained, test):
    config = module.get_config()
    if 'gmf_workdir' in config:
      config.gmf_workdir = config.mlp_workdir = '/unused'
    config_checks.validate(config)


DISTRIBUTED = {
    ('--coordinator_address=127.0.0.1:9', '--num_processes=2', '--process_id=2'):
        '--process_id=2 must be in 0 .. 1 (--num_processes=2)',
    ('--coordinator_address=127.0.0.1', '--num_processes=2', '--process_id=0'):
        '--coordinator_address=127.0.0.1: needs HOST:PORT (e.g. 127.0.0.1:12345)',
    ('--coordinator_address=127.0.0.1:x', '--num_processes=2', '--process_id=0'):
        '--coordinator_address=127.0.0.1:x: the port must be a number in 1..65535',
    ('--coordinator_address=127.0.0.1:9', '--process_id=0'):
        '--coordinator_address needs --num_processes and --process_id',
    ('--num_processes=2',): '--num_processes needs --coordinator_address (or --hosts): without '
                            'a coordinator the run would be one process',
    ('--process_id=1',): '--process_id needs --coordinator_address (or --hosts): without a '
                         'coordinator the run would be one process',
    ('--coordinator_address=127.0.0.1:9', '--num_processes=2', '--process_id=0',
     '--distributed'): '--coordinator_address and --distributed: give one way of naming the '
                       'processes',
    ('--coordinator_address=127.0.0.1:9', '--num_processes=1', '--process_id=0',
     '--initialization_timeout=0'): '--initialization_timeout=0 must be positive',
}


@pytest.mark.parametrize('args', sorted(DISTRIBUTED))
def test_distributed_flag_mistakes_are_one_line_before_any_work(empty_cwd, args):
  assert run_main(f'--config={CONFIG}', *args) == (1, f'error: {DISTRIBUTED[args]}')
  assert os.listdir(empty_cwd) == []


def test_distributed_without_a_cluster_is_one_line(empty_cwd, monkeypatch):
  for name in list(os.environ):
    if name.startswith(('SLURM_', 'TPU_', 'OMPI_', 'MEGASCALE_')):
      monkeypatch.delenv(name)
  code, line = run_main(f'--config={CONFIG}', '--distributed')
  if os.path.exists('/dev/accel0') or os.path.exists('/dev/vfio/0'):
    pytest.skip('a TPU VM: JAX detects the cluster itself')
  assert (code, line) == (1, 'error: --distributed: no cluster found in the environment (Slurm, '
                             'a TPU pod slice, Open MPI); name the processes with '
                             '--coordinator_address, --num_processes and --process_id, or --hosts')


def test_ensemble_refuses_top_k_zero():
  with pytest.raises(ConfigError, match=r'^--top_k=0: must be at least 1$'):
    ensemble.evaluate_ensemble(['/nonexistent'], top_k=0)


def test_benchmark_flag_mistakes_are_one_line_and_make_no_folder(tmp_path):
  # benchmark's flags (--data_dir, --out) share names with other commands' flags: defined for
  # each call only (`run_entry`).
  cases = {
      ('--sections=bogus,train',): '--sections=bogus,train: unknown bogus; choose from sampler, '
                                   'train, eval, epoch, accuracy, ml-20m, devices, lookup, '
                                   'communication, input, input_overlap',
      ('--repeats=0',): '--repeats=0: must be at least 1',
      (f'--out={tmp_path}/missing/b.json',): f'--out={tmp_path}/missing/b.json: '
                                             f'{tmp_path}/missing: no such directory',
  }
  for args, message in cases.items():
    result = run_entry('ncf_jax.benchmark', *args, cwd=tmp_path)
    assert result.returncode == cli.USAGE_EXIT, result.stderr
    assert result.stderr.strip().splitlines() == [_usage(message)]
  assert os.listdir(tmp_path) == []


def test_data_prepare_usage_mistake_is_one_line(tmp_path):
  result = run_module('ncf_jax.data', 'prepare', '--raw=x.csv', cwd=tmp_path, timeout=60)
  assert result.returncode == cli.USAGE_EXIT
  assert result.stderr.strip().splitlines() == [_usage('prepare needs --format')]


def test_reproduce_with_a_bad_data_dir_leaves_no_runs_folder(tmp_path):
  result = run_entry('experiments.reproduce', '--experiment=table2', '--factors=8',
                     f'--data_dir={tmp_path}/nowhere', f'--runs_dir={tmp_path}/runs',
                     f'--results_dir={tmp_path}/results', cwd=ROOT)
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines() == [f'error: {tmp_path}/nowhere: no such directory']
  assert os.listdir(tmp_path) == []


# Divergence ---------------------------------------------------------------------------------

def test_the_divergence_rule_against_hand_numbers():
  assert train.DIVERGED_LOSS == pytest.approx(69.3147, abs=1e-4)  # 100 x log 2
  ok = dict(loss_sum=0.69 * 1000, weight_sum=1000.0, nonfinite=0)
  train._check_finite(ok, 3, learning_rate=0.001)  # pylint: disable=protected-access
  for metrics, reason in (
      (dict(ok, loss_sum=70.0 * 1000), 'mean training loss 70, above 69.3'),
      (dict(ok, nonfinite=1), 'NaN or infinite')):
    with pytest.raises(NonFiniteError, match=reason):
      train._check_finite(metrics, 3, learning_rate=0.001)  # pylint: disable=protected-access


@pytest.mark.parametrize('optimizer', ['adam', 'sgd'])
def test_a_huge_learning_rate_stops_as_diverged(tmp_path, optimizer):
  config = make_config(optimizer=optimizer, learning_rate=1e6, num_epochs=2)
  with pytest.raises(NonFiniteError) as error:
    train_quietly(config, tmp_path / 'run')
  assert str(error.value).startswith('epoch 1: training diverged (')
  assert str(error.value).endswith('(config.learning_rate=1e+06): run the same command with a '
                                   'smaller one to resume after epoch 0')


def test_a_healthy_run_never_comes_near_the_divergence_rule(tmp_path):
  _, history = train_quietly(make_config(num_epochs=3), tmp_path / 'run')
  losses = [r['loss'] for r in history if r['loss'] is not None]
  assert len(losses) == 3 and max(losses) < math.log(2) < train.DIVERGED_LOSS


def test_a_missing_coordinator_or_peer_is_one_line_before_any_folder(empty_cwd):
  address = f'127.0.0.1:{free_port()}'  # nobody there
  common = (f'--config={CONFIG}', f'--coordinator_address={address}', '--num_processes=2',
            '--initialization_timeout=1')
  assert run_main(*common, '--process_id=1') == (
      1, f'error: coordinator {address}: nothing answered within 1 s (--initialization_timeout), '
         'this is process 1 of 2; start process 0 there first, with the same --num_processes')
  assert run_main(*common, '--process_id=0') == (
      1, f'error: coordinator {address}: process(es) 1 of 2 did not come within 1 s '
         '(--initialization_timeout); start every process with the same --coordinator_address '
         'and --num_processes')
  assert os.listdir(empty_cwd) == []
