"""Data tools for ncf-jax.

Usage: python -m ncf_jax.data <command> [flags]

  stats --data_dir=DIR [--validation]
      Loads and checks a directory of NCF files and summarises it (with its
      manifest, when `data prepare` made it); the last line of the output is
      one JSON object.
  prepare --raw=FILE --format=csv|tsv --user_col=NAME --item_col=NAME
          [--time_col=NAME] [--rating_col=NAME --min_rating=X] [--sep=,]
          [--encoding=utf-8] --out=DIR
  prepare --raw=FILE --format=ml-100k|ml-1m|ml-20m --out=DIR
          [--preset=paper|mlperf] [--min_user_interactions=20]
          [--test_negatives=99] [--validation] [--seed=N] [--name=NAME]
          [--negatives_format=auto|text|npy]
      Turns an interaction log (a CSV/TSV file with a header row, plain or
      .gz, or a MovieLens ratings file) into NCF files with the NCF protocol,
      plus users.tsv/items.tsv (original ids) and dataset.json (manifest).
  download --dataset=NAME [--data_dir=DIR]
      Fetches a registered dataset (default directory: $NCF_DATA_DIR/NAME,
      else ~/.cache/ncf_jax/NAME).
"""

if __name__ == '__main__':  # before the imports below: a signal meanwhile is kept
  from ncf_jax import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install()

import dataclasses  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import os
import sys
import time

from absl import app
from absl import flags

from ncf_jax import cli
from ncf_jax.data import dataset as dataset_lib
from ncf_jax.data import download
from ncf_jax.data import id_maps
from ncf_jax.data import prepare as prepare_lib
from ncf_jax.data import registry

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Directory of NCF files.')
_RAW = flags.DEFINE_string('raw', None, 'Raw interactions file (CSV/TSV with a header row, '
                           'u.data, ratings.dat, ratings.csv; plain or .gz).')
_FORMAT = flags.DEFINE_enum('format', None, list(prepare_lib.FORMATS), 'Format of --raw.')
_OUT = flags.DEFINE_string('out', None, 'Directory to write NCF files to.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of tie-breaks and negative sampling.')
_VALIDATION = flags.DEFINE_bool('validation', False,
                                'prepare: also write a validation holdout; stats: load one.')
_DATASET = flags.DEFINE_enum('dataset', None, list(registry.REGISTRY), 'Dataset to download.')
_NAME = flags.DEFINE_string('name', None,
                            'File name stem (<name>.train.rating); default: the MovieLens '
                            'format, or the --raw file\'s name without extensions, or the '
                            'one found in --data_dir.')
_USER_COL = flags.DEFINE_string('user_col', None, 'csv/tsv: header name of the user id column.')
_ITEM_COL = flags.DEFINE_string('item_col', None, 'csv/tsv: header name of the item id column.')
_TIME_COL = flags.DEFINE_string('time_col', None,
                                'csv/tsv: header name of an integer timestamp column; without '
                                'it the held-out item is a seeded random interaction.')
_RATING_COL = flags.DEFINE_string('rating_col', None, 'csv/tsv: header name of a rating column.')
_MIN_RATING = flags.DEFINE_float('min_rating', None,
                                 'Keep only rows rated at least this (default: every row).')
_SEP = flags.DEFINE_string('sep', None, 'csv/tsv: field separator (default , or tab).')
_ENCODING = flags.DEFINE_string('encoding', 'utf-8', 'Text encoding of --raw.')
_MIN_USER_INTERACTIONS = flags.DEFINE_integer(
    'min_user_interactions', 20, 'Drop users with fewer distinct items (at least 2).')
_TEST_NEGATIVES = flags.DEFINE_integer('test_negatives', prepare_lib.NUM_NEGATIVES,
                                       'Negatives per held-out item.')
_PRESET = flags.DEFINE_enum('preset', None, list(prepare_lib.PRESETS),
                            'Protocol preset: paper (the defaults) or mlperf (MLPerf v0.5 on '
                            'ML-20M: >= 20 ratings, 999 test negatives).')
_NEGATIVES_FORMAT = flags.DEFINE_enum(
    'negatives_format', 'auto', list(prepare_lib.NEGATIVES_FORMATS),
    'Negatives as text (.negative), int32 .npy (.negative.npy), or auto: .npy above 100 per '
    'row.')

_ALL = (_DATA_DIR, _RAW, _FORMAT, _OUT, _SEED, _VALIDATION, _DATASET, _NAME, _USER_COL, _ITEM_COL,
        _TIME_COL, _RATING_COL, _MIN_RATING, _SEP, _ENCODING, _MIN_USER_INTERACTIONS,
        _TEST_NEGATIVES, _PRESET, _NEGATIVES_FORMAT)
# The flags each command accepts; the first ones listed are required.
_COMMANDS = {
    'stats': ((_DATA_DIR,), (_VALIDATION, _SEED, _NAME)),
    'prepare': ((_RAW, _FORMAT, _OUT), (_SEED, _VALIDATION, _NAME, _USER_COL, _ITEM_COL,
                                        _TIME_COL, _RATING_COL, _MIN_RATING, _SEP, _ENCODING,
                                        _MIN_USER_INTERACTIONS, _TEST_NEGATIVES, _PRESET,
                                        _NEGATIVES_FORMAT)),
    'download': ((_DATASET,), (_DATA_DIR,)),
}
# Knobs a preset fixes: given with --preset, they would silently disagree with it.
_PRESET_FIXES = (_MIN_USER_INTERACTIONS, _TEST_NEGATIVES, _MIN_RATING)


def _summary(data: dataset_lib.Dataset, directory: str, seconds: float, verb: str) -> None:
  """A few readable lines, then the stats (and manifest) as one JSON line (for scripts)."""
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
  manifest = id_maps.read_manifest(directory)
  if manifest is not None:
    _print_manifest(manifest)
    stats['manifest'] = manifest
  print(json.dumps({**stats, f'{verb.split()[0]}_seconds': round(seconds, 3)}))


def _print_manifest(manifest: dict) -> None:
  source = manifest.get('source', {})
  print(f'prepared from {source.get("file")} ({source.get("size")} bytes, sha256 '
        f'{str(source.get("sha256"))[:16]}...); held-out item: {manifest.get("heldout")}')
  before = manifest.get('before', {})
  print(f'before filtering: {before.get("rows")} rows, {before.get("users")} users, '
        f'{before.get("items")} items')
  for kind in ('dropped_rows', 'dropped_users'):
    counts = manifest.get(kind, {})
    print(f'{kind.replace("_", " ")}: '
          + (', '.join(f'{n} ({reason.replace("_", " ")})' for reason, n in counts.items())
             or 'none'))


def _stats() -> None:
  directory = _DATA_DIR.value
  registry.check_data_dir(directory)
  name = _NAME.value or dataset_lib.ncf_name_in(directory)
  start = time.perf_counter()
  data = dataset_lib.load_ncf_dir(directory, name, validation=_VALIDATION.value,
                                  seed=_SEED.value)
  _summary(data, directory, time.perf_counter() - start, 'load')


def _protocol() -> prepare_lib.Protocol:
  """The protocol the flags ask for: a preset, or the knobs one by one."""
  if _PRESET.value is None:
    return prepare_lib.Protocol(min_user_interactions=_MIN_USER_INTERACTIONS.value,
                                test_negatives=_TEST_NEGATIVES.value,
                                validation=_VALIDATION.value, seed=_SEED.value,
                                min_rating=_MIN_RATING.value)
  for flag in _PRESET_FIXES:
    if flags.FLAGS[flag.name].present:
      raise app.UsageError(f'--preset={_PRESET.value} fixes --{flag.name}; give one or the '
                           'other')
  return dataclasses.replace(prepare_lib.PRESETS[_PRESET.value], validation=_VALIDATION.value,
                             seed=_SEED.value)


def _prepare() -> None:
  start = time.perf_counter()
  layout = prepare_lib.layout_for(_FORMAT.value, user_col=_USER_COL.value,
                                  item_col=_ITEM_COL.value, time_col=_TIME_COL.value,
                                  rating_col=_RATING_COL.value, sep=_SEP.value,
                                  encoding=_ENCODING.value)
  data = prepare_lib.prepare(_RAW.value, layout, _OUT.value, name=_NAME.value,
                             protocol=_protocol(), negatives_format=_NEGATIVES_FORMAT.value)
  _summary(data, _OUT.value, time.perf_counter() - start, 'prepare')


def _download() -> None:
  spec = registry.REGISTRY[_DATASET.value]
  directory = download.download_directory(spec.name, _DATA_DIR.value)
  start = time.perf_counter()
  download.fetch(spec, directory)
  data = dataset_lib.load_ncf_dir(directory, spec.name)  # checks what was fetched
  _summary(data, directory, time.perf_counter() - start, 'download')


# What an interrupt's line adds, per command.
_INTERRUPTED_NOTES = {
    'prepare': 'nothing was written; the same command starts again',
    'download': 'files already downloaded whole are kept; the same command fetches the rest',
}


def _interrupted_note() -> str:
  """The note of the command on the command line (a signal may come before it is parsed)."""
  command = next((arg for arg in sys.argv[1:] if arg in _COMMANDS), None)
  return _INTERRUPTED_NOTES.get(command, '')


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in _COMMANDS:
    got = ' '.join(argv[1:]) or 'nothing'
    raise app.UsageError(f'expected one command ({", ".join(_COMMANDS)}), got {got}')
  command = argv[1]
  required, optional = _COMMANDS[command]
  for flag in required:
    if flag.value is None:
      raise app.UsageError(f'{command} needs --{flag.name}')
  allowed = {flag.name for flag in required + optional}
  for flag in _ALL:
    if flags.FLAGS[flag.name].present and flag.name not in allowed:
      raise app.UsageError(f'{command} does not take --{flag.name}')
  {'stats': _stats, 'prepare': _prepare, 'download': _download}[command]()


if __name__ == '__main__':
  cli.run(main, max_args=1, interrupted_note=_interrupted_note)
