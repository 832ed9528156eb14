"""How long `data prepare` takes, and how much memory, on a log of ML-20M's shape.

  python -m experiments.prepare_scale [--lines=20000000] [--users=140000] [--items=27000]
      [--preset=paper|mlperf] [--gzip] [--quote]

Generates a CSV file with a header row and string ids (`u123`, `m4567`),
ratings in half stars and integer timestamps: users grouped as in ML-20M's
ratings.csv, each with at least 20 rows except about 2% with 5-19 (dropped by
the protocol), items drawn with Zipf-like popularity (so some pairs repeat).
Then runs the real command line, `python -m ncf_jax.data prepare`, in a
subprocess and prints its wall time and peak resident memory
(`getrusage(RUSAGE_CHILDREN).ru_maxrss`, the largest child) with the load
average. Everything is written to a temporary directory that is deleted
afterwards. `--quote` puts every id in double quotes, which sends the file
through Python's csv module (the slow path); `--gzip` compresses it.
"""

import gzip
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np

from ncf_jax import cli
from ncf_jax.data import ncf_format

def define_flags() -> None:
  """The command's flags, defined when it runs (`cli.run`), not at import."""
  flags.DEFINE_integer('lines', 20_000_000, 'Data rows in the generated file.')
  flags.DEFINE_integer('users', 140_000, 'Users in the generated file.')
  flags.DEFINE_integer('items', 27_000, 'Items in the generated file.')
  flags.DEFINE_enum('preset', 'paper', ['paper', 'mlperf'], 'Protocol preset to prepare with.')
  flags.DEFINE_bool('gzip', False, 'Compress the generated file.')
  flags.DEFINE_bool('quote', False, 'Quote every id (the csv-module path).')
  flags.DEFINE_integer('seed', 0, 'Seed of the generated data.')


FLAGS = flags.FLAGS

_ROWS_PER_CHUNK = 1 << 20
HEADER = 'userId,movieId,rating,timestamp\n'


def rows_per_user(rng: np.random.Generator, lines: int, users: int) -> np.ndarray:
  """At least 20 rows per user (2% of users get 5-19), a heavy tail, `lines` in all."""
  counts = np.full(users, 20, dtype=np.int64)
  light = rng.random(users) < 0.02
  counts[light] = rng.integers(5, 20, int(light.sum()))
  weight = np.where(light, 0.0, rng.lognormal(0.0, 1.2, users))
  extra = lines - counts.sum()
  counts += np.floor(weight / weight.sum() * extra).astype(np.int64)
  counts[np.argsort(-weight)[:lines - counts.sum()]] += 1  # what rounding left over
  return counts


def write_log(path: str, lines: int, users: int, items: int, quote: bool, seed: int) -> None:
  """Writes the generated log as CSV, chunk by chunk (never all rows in memory at once)."""
  rng = np.random.default_rng(seed)
  user_of_row = np.repeat(np.arange(users), rows_per_user(rng, lines, users))
  popularity = 1.0 / (np.arange(items) + 10.0) ** 0.9
  cumulative = np.cumsum(rng.permutation(popularity))
  q = '"' if quote else ''
  separators = [f'{q},{q}m'.encode(), f'{q},'.encode(), b'.', b',', b'\n']
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wt', encoding='ascii', newline='') as f:
    f.write(HEADER)
    for start in range(0, lines, _ROWS_PER_CHUNK):
      chunk_users = user_of_row[start:start + _ROWS_PER_CHUNK]
      n = len(chunk_users)
      chunk_items = np.searchsorted(cumulative, rng.random(n) * cumulative[-1])
      half_stars = rng.integers(1, 11, n)
      table = np.stack([chunk_users, chunk_items, half_stars // 2, 5 * (half_stars % 2),
                        rng.integers(789_652_009, 1_427_784_002, n)], axis=1)
      f.write(ncf_format.format_int_rows(table, f'{q}u'.encode(), separators))


def measure(raw: str, out: str, preset: str) -> tuple[float, float, int]:
  """Wall seconds, peak RSS in GB and exit code of `data prepare` in a subprocess."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, '-m', 'ncf_jax.data', 'prepare', f'--raw={raw}', '--format=csv',
             '--user_col=userId', '--item_col=movieId', '--time_col=timestamp',
             '--rating_col=rating', f'--preset={preset}', f'--out={out}']
  start = time.perf_counter()
  result = subprocess.run(command, cwd=root, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if result.returncode:
    print(result.stderr[-2000:], file=sys.stderr)
  else:
    print('\n'.join(result.stdout.splitlines()[:-1]))  # the readable lines, not the JSON
  peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # KiB on Linux
  return seconds, peak_gb, result.returncode


def main(argv):
  del argv
  tmp = tempfile.mkdtemp(prefix='ncf_prepare_scale_')
  try:
    raw = os.path.join(tmp, 'ratings.csv' + ('.gz' if FLAGS.gzip else ''))
    start = time.perf_counter()
    write_log(raw, FLAGS.lines, FLAGS.users, FLAGS.items, FLAGS.quote, FLAGS.seed)
    print(f'generated {FLAGS.lines:,} lines, {os.path.getsize(raw) / 1e6:.0f} MB, in '
          f'{time.perf_counter() - start:.1f} s')
    load_before = os.getloadavg()
    seconds, peak_gb, code = measure(raw, os.path.join(tmp, 'out'), FLAGS.preset)
    load_after = os.getloadavg()
    print(f'prepare (--preset={FLAGS.preset}{", gzip" if FLAGS.gzip else ""}'
          f'{", quoted" if FLAGS.quote else ""}): exit {code}, {seconds:.1f} s wall, '
          f'peak RSS {peak_gb:.2f} GB; load average before {load_before[0]:.2f}, '
          f'after {load_after[0]:.2f} (on {os.cpu_count()} CPUs)')
    return code
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  cli.run(main, define_flags)
