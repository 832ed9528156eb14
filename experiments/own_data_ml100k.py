"""Your own data, tried on a real log: MovieLens-100K as a CSV with string ids.

  python -m experiments.own_data_ml100k --raw=../shared/data/ml-100k/u.data [--out=DIR]

Builds `ratings.csv` (header `user_id,movie_id,stars,ts`; ids `u196`, `m242`)
from the raw `u.data` in a temporary folder, runs the same command a user
would (`python -m ncf_jax.data prepare --format=csv ...`), then reads the
prepared folder back and prints its stats, manifest and a user's history in
original ids. The CSV stays in the temporary folder (MovieLens may not be
redistributed); the prepared files go to `--out`, or are deleted too.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from absl import flags

from ncf_jax import cli
from ncf_jax.data import dataset as dataset_lib
from ncf_jax.data import id_maps

def define_flags() -> None:
  """The command's flags, defined when it runs (`cli.run`), not at import."""
  flags.DEFINE_string('raw', None, 'MovieLens-100K u.data (tab-separated user item rating time).',
                      required=True)
  flags.DEFINE_string('out', None, 'Where to keep the prepared files (default: deleted).')


FLAGS = flags.FLAGS


def write_csv(u_data: str, path: str) -> int:
  """u.data -> CSV with a header and string ids; returns the number of rows."""
  with open(u_data) as f:
    rows = [line.split('\t') for line in f.read().splitlines() if line]
  with open(path, 'w') as f:
    f.write('user_id,movie_id,stars,ts\n')
    f.writelines(f'u{user},m{item},{stars},{ts}\n' for user, item, stars, ts in rows)
  return len(rows)


def prepare_command(csv_path: str, out: str) -> list[str]:
  return [sys.executable, '-m', 'ncf_jax.data', 'prepare', f'--raw={csv_path}', '--format=csv',
          '--user_col=user_id', '--item_col=movie_id', '--time_col=ts', '--rating_col=stars',
          f'--out={out}']


def show(out: str) -> None:
  """The prepared folder read back as a user of the library would."""
  data = dataset_lib.load_ncf_dir(out, 'ratings')
  maps = id_maps.id_maps_for(data)
  manifest = id_maps.read_manifest(out)
  print(f'loaded: {data.num_users} users, {data.num_items} items, {data.num_train} training '
        f'pairs; held-out item: {manifest["heldout"]}; source sha256 '
        f'{manifest["source"]["sha256"][:16]}...')
  user = maps.user_index('u196')
  train = data.train_items[data.train_users == user]
  print(f"user 'u196' is index {user}: {len(train)} training movies, e.g. "
        + ', '.join(maps.items[i] for i in train[:8])
        + f"; held out: {maps.items[data.test.items[user]]}")
  popular = data.item_popularity.argsort()[::-1][:5]
  print('most popular in training: ' + ', '.join(
      f'{maps.items[i]} ({data.item_popularity[i]})' for i in popular))


def main(argv):
  del argv
  tmp = tempfile.mkdtemp(prefix='ncf_own_data_')
  try:
    csv_path = os.path.join(tmp, 'ratings.csv')
    print(f'wrote {write_csv(FLAGS.raw, csv_path)} rows to {csv_path}')
    out = FLAGS.out or os.path.join(tmp, 'prepared')
    command = prepare_command(csv_path, out)
    print('$ python ' + ' '.join(command[1:]).replace(tmp, '$TMP'))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(command, cwd=root)
    if result.returncode:
      return result.returncode
    show(out)
    return 0
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  cli.run(main, define_flags)
