"""`load_dataset(settings)`: the dataset a run names, from where its files live.

`config.data_dir` names a directory of NCF files that must exist: nothing is
ever downloaded into a directory the user named. A registered dataset without
`data_dir` is read from the cache (`$NCF_DATA_DIR/<name>`, else
`~/.cache/ncf_jax/<name>`) and downloaded there when missing.
"""

import dataclasses
import os

from ncf_jax.data import download, synthetic
from ncf_jax.data.dataset import (Dataset, carve_validation, has_ncf_files, load_ncf_dir,
                                  ncf_name_in)
from ncf_jax.data.files import one_line
from ncf_jax.data.spec import NCF_SUFFIXES, REGISTRY, SYNTHETIC, DatasetSpec, default_data_dir
from ncf_jax.errors import ConfigError, DataError

# Names other modules import from here (several are defined in spec and dataset).
__all__ = ['NCF_SUFFIXES', 'DATA_DIR_HINT', 'REGISTRY', 'SYNTHETIC', 'DatasetSpec',
           'DataSettings', 'check_data_dir',
           'default_data_dir', 'has_ncf_files', 'load_dataset', 'ncf_name_in']

DATA_DIR_HINT = ('to work offline, put the files in a directory and set --config.data_dir=DIR '
                '(or $NCF_DATA_DIR to the folder above it), or use --config.dataset=synthetic')


def check_data_dir(directory: str) -> None:
  """DataError unless `directory` is an existing, readable directory."""
  if not os.path.exists(directory):
    raise DataError(f'{directory}: no such directory')
  if not os.path.isdir(directory):
    raise DataError(f'{directory}: is a file, not a directory of NCF files')
  try:
    os.listdir(directory)
  except OSError as e:
    raise DataError(f'{directory}: cannot read ({one_line(e)})') from None


def _name_in(directory: str, name: str) -> str:
  """`name` if `directory` has its NCF files, else the one name it has files for."""
  if has_ncf_files(directory, name):
    return name
  try:
    return ncf_name_in(directory)  # a directory the user prepared under another name
  except DataError:
    raise DataError(f'{directory}: no {name}.train.rating / .test.rating / .test.negative '
                    '(make NCF files with `python -m ncf_jax.data prepare`)') from None


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """Which data a run reads (run_settings reads it from a config)."""
  dataset: str  # a key of REGISTRY, SYNTHETIC, or the stem of NCF files in data_dir
  data_dir: str | None = None  # a directory of NCF files; None: the registered cache
  validation: bool = False  # carve a validation holdout out of training
  seed: int = 0  # the run's seed: it carves the validation holdout
  synthetic: tuple = ()  # SYNTHETIC's generator arguments, as (name, value) pairs


def load_dataset(settings: DataSettings) -> Dataset:
  """The dataset `settings` names: synthetic, NCF files in `data_dir`, or a registered one.

  For synthetic data, `settings.synthetic` holds the generator's arguments (whose own
  `seed` generates the data); the run's `seed` carves the validation holdout.
  """
  if settings.dataset == SYNTHETIC:
    params = dict(settings.synthetic)
    params.setdefault('seed', settings.seed)  # workdirs written before synthetic.seed existed
    dataset = synthetic.generate(**params)
    if settings.validation:
      dataset = carve_validation(dataset, settings.seed, dataset.test.negatives.shape[1])
    return dataset
  if settings.data_dir:
    directory = settings.data_dir
    check_data_dir(directory)
    name = _name_in(directory, settings.dataset)
  elif settings.dataset in REGISTRY:
    directory = download.cache_dir(settings.dataset)
    name = settings.dataset
    if not has_ncf_files(directory, name):
      download.fetch(REGISTRY[name], directory, offline_hint=DATA_DIR_HINT)
  else:
    raise ConfigError(f'config.dataset: unknown dataset {settings.dataset!r}; known: '
                      f'{", ".join([*REGISTRY, SYNTHETIC])}, or set config.data_dir to a '
                      'directory of NCF files')
  return load_ncf_dir(directory, name, validation=settings.validation, seed=settings.seed)
