"""The command line: a real run, and one-line errors for bad flags."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, workdir):
  return subprocess.run(
      [sys.executable, '-m', 'ncf_jax.main', '--config=configs/test.py', f'--workdir={workdir}',
       *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_test_config_run_writes_metrics(tmp_path):
  result = _main('--config.num_epochs=2', workdir=tmp_path)
  assert result.returncode == 0, result.stderr
  records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [0, 1, 2]
  assert 'best epoch' in result.stdout
  assert json.loads((tmp_path / 'config.json').read_text())['num_epochs'] == 2


@pytest.mark.parametrize('args,expected', [
    (['--config.num_factor=16'], 'num_factor'),
    (['--config.num_factors=8.5'], 'num_factors'),
    (['--config.model=transformer'], 'config.model'),
    (['--config.batch_size=0'], 'config.batch_size'),
])
def test_bad_config_fails_in_one_line(tmp_path, args, expected):
  result = _main(*args, workdir=tmp_path)
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if expected in l]
  assert len(errors) == 1, result.stderr


def test_misspelt_key_suggests_the_right_one(tmp_path):
  result = _main('--config.num_factor=16', workdir=tmp_path)
  assert 'Did you mean "num_factors"' in result.stderr


def test_stray_positional_argument_is_a_usage_error(tmp_path):
  result = _main('--config.validation', 'True', workdir=tmp_path)
  assert result.returncode != 0
  assert 'unexpected arguments' in result.stderr
  assert not (tmp_path / 'metrics.jsonl').exists()
