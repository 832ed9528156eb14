"""`python -m ncf_jax.data`: prepare then stats as a user runs them, and its errors."""

import json
import os
import subprocess

import numpy as np
import pytest

from conftest import run_module

def _run(*args: str) -> subprocess.CompletedProcess:
  return run_module('ncf_jax.data', *args, timeout=120)


@pytest.fixture(scope='module')
def raw_file(tmp_path_factory):
  """ML-1M `ratings.dat`: 30 users with 20-29 items of 200, and 2 users with 10."""
  rng = np.random.default_rng(0)
  lines = []
  for user in range(1, 33):
    count = 10 if user > 30 else 20 + user % 10
    for item in rng.choice(np.arange(1, 201), count, replace=False):
      lines.append(f'{user}::{item}::{rng.integers(1, 6)}::{rng.integers(10**8, 10**9)}\n')
  path = tmp_path_factory.mktemp('raw') / 'ratings.dat'
  path.write_text(''.join(lines))
  return str(path), sum(20 + u % 10 for u in range(1, 31))


def test_prepare_then_stats(raw_file, tmp_path):
  raw, num_interactions = raw_file
  out = str(tmp_path / 'ml-1m')
  prepared = _run('prepare', f'--raw={raw}', '--format=ml-1m', f'--out={out}', '--seed=3')
  assert prepared.returncode == 0, prepared.stderr
  stats = _run('stats', f'--data_dir={out}')
  assert stats.returncode == 0, stats.stderr
  lines = stats.stdout.strip().splitlines()
  assert len(lines) >= 2  # readable lines first
  summary = json.loads(lines[-1])
  assert summary['name'] == 'ml-1m'
  assert summary['num_users'] == 30  # the two 10-item users are dropped
  assert summary['num_train'] == num_interactions - 30
  assert summary['num_test'] == 30 and summary['num_test_negatives'] == 99
  assert summary['load_seconds'] >= 0
  assert json.loads(prepared.stdout.strip().splitlines()[-1])['num_train'] == summary['num_train']


def test_prepare_with_validation_then_stats(raw_file, tmp_path):
  raw, num_interactions = raw_file
  out = str(tmp_path / 'v')
  assert _run('prepare', f'--raw={raw}', '--format=ml-1m', f'--out={out}', '--validation',
              '--name=small').returncode == 0
  assert sorted(os.listdir(out)) == sorted([f'small.{s}' for s in (
      'train.rating', 'test.rating', 'test.negative', 'valid.rating', 'valid.negative')]
                                           + ['dataset.json', 'items.tsv', 'users.tsv'])
  summary = json.loads(_run('stats', f'--data_dir={out}', '--validation').stdout.splitlines()[-1])
  assert summary['num_valid'] == 30 and summary['num_train'] == num_interactions - 60


def test_bad_file_is_one_line_error(tmp_path):
  raw = tmp_path / 'ratings.dat'
  raw.write_text('1::2::3::4\n1::x::3::5\n')
  result = _run('prepare', f'--raw={raw}', '--format=ml-1m', f'--out={tmp_path / "out"}')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert errors == [f"error: {raw}:2: item id 'x' is not an integer >= 0"], result.stderr


def test_stats_on_a_directory_without_data(tmp_path):
  result = _run('stats', f'--data_dir={tmp_path}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {tmp_path}: expected one')


@pytest.mark.parametrize('args,words', [
    (('bogus',), 'expected one command'),
    (('prepare', '--raw=x', '--format=ml-1m'), 'prepare needs --out'),
    (('stats', '--data_dir=x', '--raw=y'), 'stats does not take --raw'),
])
def test_usage_errors(args, words):
  result = _run(*args)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert words in result.stderr


def test_prepare_csv_then_stats_shows_the_manifest(tmp_path):
  rows = ['customer;product;day']
  rows += [f'c{u};p{(u * 13 + k) % 150};{k}' for u in range(5) for k in range(22)]
  (tmp_path / 'orders.csv').write_text('\n'.join(rows) + '\n')
  out = str(tmp_path / 'out')
  prepared = _run('prepare', f'--raw={tmp_path / "orders.csv"}', '--format=csv', '--sep=;',
                  '--user_col=customer', '--item_col=product', '--time_col=day',
                  '--test_negatives=50', f'--out={out}')
  assert prepared.returncode == 0, prepared.stderr
  stats = _run('stats', f'--data_dir={out}')
  assert stats.returncode == 0, stats.stderr
  assert 'prepared from orders.csv' in stats.stdout and 'held-out item: latest' in stats.stdout
  summary = json.loads(stats.stdout.strip().splitlines()[-1])
  assert summary['num_users'] == 5 and summary['num_test_negatives'] == 50
  assert summary['manifest']['parameters']['user'] == 'customer'
  assert summary['manifest']['after']['users'] == 5
  with open(os.path.join(out, 'users.tsv')) as f:
    assert f.read() == ''.join(f'c{u}\n' for u in range(5))


@pytest.mark.parametrize('args,words', [
    (('--preset=mlperf', '--test_negatives=5'), 'fixes --test_negatives'),
    (('--user_col=x',), '--user_col: --format=ml-1m has fixed columns'),
])
def test_prepare_flag_errors(tmp_path, args, words):
  result = _run('prepare', '--raw=x', '--format=ml-1m', f'--out={tmp_path}', *args)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert words in result.stderr


def test_download_into_a_folder_whose_parent_is_missing(tmp_path):
  result = _run('download', '--dataset=ml-100k', f'--data_dir={tmp_path}/typo/ml-100k')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: --data_dir={tmp_path}/typo/ml-100k: {tmp_path}/typo: no such directory')
  assert os.listdir(tmp_path) == []
