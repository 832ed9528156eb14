"""SIGTERM and Ctrl-C at any moment end a command with one line and exit 143 / 130 (issue 22,
item 1): the signal is sent at many offsets into a resume of a finished run, which walks
through the imports, the flag parsing, data generation, the checkpoint restore (a raising
handler's exception used to be lost in the collector's finalisers of Orbax's reads),
compilation and training; and into `data prepare`. A process boundary is what is tested."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, make_config, train_quietly

RESUME_NOTE = 'the same command resumes after the last saved epoch'


def _ready(pid: int) -> bool:
  """Whether the process catches SIGTERM yet (its handler is installed): /proc's SigCgt."""
  with open(f'/proc/{pid}/status', encoding='ascii') as f:
    caught = next(line for line in f if line.startswith('SigCgt:')).split()[1]
  return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


def _start(args: list[str], cwd) -> subprocess.Popen:
  env = dict(os.environ, JAX_NUMPY_RANK_PROMOTION='raise')
  process = subprocess.Popen([sys.executable, *args], cwd=str(cwd), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 60
  while not _ready(process.pid):  # the interpreter's own start-up precedes any handler
    assert process.poll() is None and time.monotonic() < deadline
    time.sleep(0.005)
  return process


def _interrupt(process: subprocess.Popen, sig: int, delay: float, after: str | None = None
               ) -> tuple[int, list[str], str]:
  """Sends `sig` `delay` s after the handler is installed, or after a stdout line starting with
  `after`; returns (exit code, stderr lines, stdout)."""
  seen = ''
  if after is not None:
    while True:
      line = process.stdout.readline()
      seen += line
      if not line or line.startswith(after):
        break
  time.sleep(delay)
  process.send_signal(sig)
  out, err = process.communicate(timeout=300)
  return process.returncode, err.strip().splitlines(), seen + out


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  train_quietly(make_config(num_epochs=1), workdir)
  return workdir


# (anchor, seconds): after the handler is installed (imports, flags, data), or after the line
# naming the dataset, which comes just before the restore, compilation and training. One test
# per moment, so that a failure names its moment.
BUILT = 'synthetic:'
MOMENTS = [(signal.SIGTERM, None, 0.0), (signal.SIGTERM, None, 1.5), (signal.SIGTERM, BUILT, 0.0),
           (signal.SIGTERM, BUILT, 0.1), (signal.SIGTERM, BUILT, 0.3), (signal.SIGTERM, BUILT, 0.8),
           (signal.SIGINT, None, 0.5), (signal.SIGINT, BUILT, 0.2)]


@pytest.mark.parametrize('sig,anchor,delay', MOMENTS)
def test_a_signal_at_any_moment_of_a_resume_ends_in_one_line(tmp_path, finished_run, sig, anchor,
                                                             delay):
  name = 'SIGTERM' if sig == signal.SIGTERM else 'Ctrl-C'
  workdir = tmp_path / 'run'
  shutil.copytree(finished_run, workdir)
  # Epochs enough that the run is still working at the latest moment on a fast machine (with
  # 2, a run had ended 0.8 s after the dataset line): the process ends at the signal.
  process = _start(['-m', 'ncf_jax.main', '--config=configs/test.py',
                    '--config.num_epochs=200', f'--workdir={workdir}'], ROOT)
  code, lines, out = _interrupt(process, sig, delay, anchor)
  assert code == 128 + sig, (anchor, delay, lines)
  assert lines in ([f'error: interrupted ({name}); {RESUME_NOTE}'],
                   [f'error: interrupted ({name}) as the command finished (its work is '
                    'complete)']), (anchor, delay, lines)
  # Where the signal landed (-s shows it).
  print('last stdout line:', out.strip().splitlines()[-1][:30] if out.strip() else '(nothing)')


def test_an_interrupted_data_prepare_writes_nothing_and_says_so(tmp_path):
  rng = np.random.default_rng(0)
  users, items = rng.integers(0, 20_000, 1_000_000), rng.integers(0, 5_000, 1_000_000)
  raw = tmp_path / 'log.csv'
  with open(raw, 'w', encoding='utf-8') as f:
    f.write('user,item\n')
    f.writelines(f'u{u},i{i}\n' for u, i in zip(users, items))
  out = tmp_path / 'prepared'
  process = _start(['-m', 'ncf_jax.data', 'prepare', f'--raw={raw}', '--format=csv',
                    '--user_col=user', '--item_col=item', f'--out={out}'], tmp_path)
  # The handler comes before the imports (~0.4 s here), the work after them takes ~1.8 s
  # (reading, splitting, sampling): 0.8 s lands in the work even on a machine twice as fast.
  code, lines, stdout = _interrupt(process, signal.SIGTERM, 0.8)
  assert code == 143, lines
  assert lines == ['error: interrupted (SIGTERM); nothing was written; the same command starts '
                   'again'], stdout
  assert not out.exists()
