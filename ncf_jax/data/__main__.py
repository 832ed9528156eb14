"""Data tools for ncf-jax.

Usage: python -m ncf_jax.data <command> [flags]

  stats --data_dir=DIR [--validation]
      Loads and checks a directory of NCF files and summarises it; the last
      line of the output is one JSON object.
  prepare --raw=FILE --format=ml-100k|ml-1m|ml-20m --out=DIR [--seed=N]
          [--validation] [--name=NAME]
      Turns raw MovieLens ratings into NCF files with the NCF protocol.
  download --dataset=NAME [--data_dir=DIR]
      Fetches a registered dataset (default directory: $NCF_DATA_DIR/NAME,
      else ~/.cache/ncf_jax/NAME).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

from ncf_jax.data import dataset as dataset_lib
from ncf_jax.data import prepare as prepare_lib
from ncf_jax.data import registry
from ncf_jax.errors import DataError, NcfError

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Directory of NCF files.')
_RAW = flags.DEFINE_string('raw', None, 'Raw ratings file (u.data, ratings.dat, ratings.csv).')
_FORMAT = flags.DEFINE_enum('format', None, list(prepare_lib.FORMATS), 'Format of --raw.')
_OUT = flags.DEFINE_string('out', None, 'Directory to write NCF files to.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of tie-breaks and negative sampling.')
_VALIDATION = flags.DEFINE_bool('validation', False,
                                'prepare: also write a validation holdout; stats: load one.')
_DATASET = flags.DEFINE_enum('dataset', None, list(registry.REGISTRY), 'Dataset to download.')
_NAME = flags.DEFINE_string('name', None,
                            'File name stem (<name>.train.rating); default: the format, or '
                            'the one found in --data_dir.')

# The flags each command accepts; the first ones listed are required.
_COMMANDS = {
    'stats': ((_DATA_DIR,), (_VALIDATION, _SEED, _NAME)),
    'prepare': ((_RAW, _FORMAT, _OUT), (_SEED, _VALIDATION, _NAME)),
    'download': ((_DATASET,), (_DATA_DIR,)),
}


def _summary(data: dataset_lib.Dataset, directory: str, seconds: float, verb: str) -> None:
  """A few readable lines, then the stats as one JSON line (for scripts)."""
  stats = data.stats()
  print(f'{data.name} in {directory} ({verb} in {seconds:.2f} s)')
  print(f'{data.num_users} users, {data.num_items} items, {data.num_train} training '
        f'interactions (density {stats["density"]:.4%})')
  print(f'{stats["num_test"]} test items with {stats["num_test_negatives"]} negatives each; '
        f'{stats["test_rows_listing_heldout_among_negatives"]} rows list the held-out item '
        'among their negatives')
  if data.valid is not None:
    print(f'{stats["num_valid"]} validation items with {stats["num_valid_negatives"]} '
          'negatives each')
  print(json.dumps({**stats, f'{verb.split()[0]}_seconds': round(seconds, 3)}))


def _stats() -> None:
  directory = _DATA_DIR.value
  if not os.path.isdir(directory):
    raise DataError(f'{directory}: no such directory')
  name = _NAME.value or registry.ncf_name_in(directory)
  start = time.perf_counter()
  data = dataset_lib.load_ncf_dir(directory, name, validation=_VALIDATION.value,
                                  seed=_SEED.value)
  _summary(data, directory, time.perf_counter() - start, 'load')


def _prepare() -> None:
  start = time.perf_counter()
  data = prepare_lib.prepare(_RAW.value, _FORMAT.value, _OUT.value, name=_NAME.value,
                             seed=_SEED.value, validation=_VALIDATION.value)
  _summary(data, _OUT.value, time.perf_counter() - start, 'prepare')


def _download() -> None:
  from ncf_jax.data import download  # pylint: disable=g-import-not-at-top
  spec = registry.REGISTRY[_DATASET.value]
  directory = _DATA_DIR.value or registry.default_data_dir(spec.name)
  start = time.perf_counter()
  download.fetch(spec, directory)
  data = dataset_lib.load_ncf_dir(directory, spec.name)  # checks what was fetched
  _summary(data, directory, time.perf_counter() - start, 'download')


def main(argv: list[str]) -> int:
  if len(argv) != 2 or argv[1] not in _COMMANDS:
    got = ' '.join(argv[1:]) or 'nothing'
    raise app.UsageError(f'expected one command ({", ".join(_COMMANDS)}), got {got}')
  command = argv[1]
  required, optional = _COMMANDS[command]
  for flag in required:
    if flag.value is None:
      raise app.UsageError(f'{command} needs --{flag.name}')
  allowed = {flag.name for flag in required + optional}
  for flag in (_DATA_DIR, _RAW, _FORMAT, _OUT, _SEED, _VALIDATION, _DATASET, _NAME):
    if flags.FLAGS[flag.name].present and flag.name not in allowed:
      raise app.UsageError(f'{command} does not take --{flag.name}')
  try:
    {'stats': _stats, 'prepare': _prepare, 'download': _download}[command]()
  except NcfError as e:
    print('error: ' + ' '.join(str(e).split()), file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  app.run(main)
