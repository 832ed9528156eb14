"""Every results table names the training-example stream that produced it."""

import glob
import os
import subprocess

import pytest

from conftest import ROOT
from experiments import stream

# Written by experiments/baselines.py, whose branch adds its stream line (EASE and iALS draw
# no training examples; its MF rows are stream np-rng).
NOT_YET = {'baselines.md'}


def test_every_results_file_carries_a_stream_line():
  files = sorted(glob.glob(os.path.join(ROOT, 'experiments', 'results', '*.md')))
  assert len(files) >= 10
  for path in files:
    if os.path.basename(path) in NOT_YET:
      continue
    lines = open(path, encoding='utf-8').read().splitlines()
    labels = [line for line in lines if line.startswith(('Stream: ', 'Stream of record: '))]
    assert len(labels) == 1, path
    assert labels[0].startswith(('Stream: counter-based (Threefry) epoch stream `NCF1`',
                                 'Stream of record: NumPy-rng feeder (`np-rng`), commit ')), path


def _known(commit: str) -> bool:
  return subprocess.run(['git', '-C', ROOT, 'cat-file', '-e', f'{commit}^{{commit}}'],
                        capture_output=True, check=False).returncode == 0


def test_a_commit_names_its_stream():
  if not all(_known(c) for c in (stream.NCF1_FIRST_COMMIT, stream.NP_RNG_COMMIT_OF_RECORD)):
    pytest.skip('a checkout without the history of both streams')
  assert stream.stream_of(stream.NP_RNG_COMMIT_OF_RECORD) == 'np-rng'
  assert stream.stream_of(stream.NCF1_FIRST_COMMIT) == 'NCF1'
  assert stream.stream_of('HEAD') == 'NCF1'
  assert stream.stream_line('f364034') == ('Stream of record: NumPy-rng feeder (`np-rng`), '
                                           'commit f364034 (runs made at f364034).')
  head = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'], capture_output=True,
                        text=True, check=True).stdout.strip()
  assert stream.stream_line() == ('Stream: counter-based (Threefry) epoch stream `NCF1` '
                                  f'(`ncf_jax/epoch.py`), commit {head}.')
  assert stream.stream_line('0' * 40).startswith('Stream: unknown')
