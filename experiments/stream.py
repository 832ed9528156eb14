"""Which training-example stream produced a results table: the line every results file carries.

Two streams have trained this project's runs. `np-rng`: the NumPy feeder
(`default_rng([seed, epoch])`), commit f364034 and before; its published tables keep that
commit as their commit of record. `NCF1`: the counter-based epoch definition
(`ncf_jax/epoch.py`: Threefry-2x32, a keyed Feistel permutation, keyed rejection), which
training has drawn from since commit 23adaee; the host and device executors give the same
integers, so the executor does not enter the label.
"""

import os
import subprocess

NP_RNG_COMMIT_OF_RECORD = 'f364034'
NCF1_FIRST_COMMIT = '23adaee'  # the first commit whose training draws stream NCF1
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(['git', '-C', _ROOT, *args], capture_output=True, text=True,
                        check=False, timeout=30)


def checkout_commit() -> str:
  """The short commit of this checkout ('unknown' outside a git checkout)."""
  try:
    result = _git('rev-parse', '--short', 'HEAD')
  except OSError:
    return 'unknown'
  return result.stdout.strip() if result.returncode == 0 else 'unknown'


def stream_of(commit: str) -> str | None:
  """'NCF1' or 'np-rng' for a commit of this repository; None when git cannot tell."""
  try:
    result = _git('merge-base', '--is-ancestor', NCF1_FIRST_COMMIT, commit)
  except OSError:
    return None
  return {0: 'NCF1', 1: 'np-rng'}.get(result.returncode)


def stream_line(commit: str | None = None) -> str:
  """The results file's stream line for runs made by `commit` (default: this checkout, whose
  code draws NCF1)."""
  stream = 'NCF1' if commit is None else stream_of(commit)
  commit = checkout_commit() if commit is None else commit[:7]
  if stream == 'NCF1':
    return ('Stream: counter-based (Threefry) epoch stream `NCF1` (`ncf_jax/epoch.py`), '
            f'commit {commit}.')
  if stream == 'np-rng':
    return (f'Stream of record: NumPy-rng feeder (`np-rng`), commit {NP_RNG_COMMIT_OF_RECORD} '
            f'(runs made at {commit}).')
  return f'Stream: unknown (runs made at commit {commit}, not in this checkout).'
