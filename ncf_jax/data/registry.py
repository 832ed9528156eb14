"""Named datasets, where their files live, and `load_dataset(config)`."""

import dataclasses
import glob
import os

from ncf_jax.data import synthetic
from ncf_jax.data.dataset import Dataset, carve_validation, load_ncf_dir
from ncf_jax.errors import ConfigError, DataError

_NCF_REPO = 'https://raw.githubusercontent.com/hexiangnan/neural_collaborative_filtering/master/Data'
_GROUPLENS = 'https://files.grouplens.org/datasets/movielens'
NCF_SUFFIXES = ('train.rating', 'test.rating', 'test.negative')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to obtain a named dataset's NCF files.

  `ncf_files`: suffix -> (url, git blob sha1) for files published in NCF format.
  `raw_archive`/`raw_member`/`raw_format`: a GroupLens zip to download and
  turn into NCF files with `ncf_jax.data.prepare`.
  """
  name: str
  ncf_files: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
  raw_archive: str | None = None
  raw_member: str | None = None
  raw_format: str | None = None


def _ncf(name: str, blobs: tuple[str, str, str]) -> DatasetSpec:
  return DatasetSpec(name, {suffix: (f'{_NCF_REPO}/{name}.{suffix}', blob)
                            for suffix, blob in zip(NCF_SUFFIXES, blobs)})


REGISTRY = {
    spec.name: spec for spec in (
        _ncf('ml-1m', ('31ba384fd58dac8fbd09d2dfc6616431f3563ab5',
                       '1b79e03c96710c3b0c35deb19155ef74f7965a02',
                       'c82844fb99d021f94751a6f915a230a1e8b8da92')),
        _ncf('pinterest-20', ('99813f8ed7486c36fa0f405e3f400db5d6fed0be',
                              '87fdbd13bced61c51f2842e2a667e83b9b0084e3',
                              'b752ccdc14df423b9484771440ff4a73e4a4a304')),
        DatasetSpec('ml-100k', raw_archive=f'{_GROUPLENS}/ml-100k.zip',
                    raw_member='ml-100k/u.data', raw_format='ml-100k'),
        DatasetSpec('ml-20m', raw_archive=f'{_GROUPLENS}/ml-20m.zip',
                    raw_member='ml-20m/ratings.csv', raw_format='ml-20m'),
    )
}
SYNTHETIC = 'synthetic'


def default_data_dir(name: str) -> str:
  """`$NCF_DATA_DIR/<name>` if that variable is set, else `~/.cache/ncf_jax/<name>`."""
  root = os.environ.get('NCF_DATA_DIR') or os.path.join(os.path.expanduser('~'), '.cache',
                                                        'ncf_jax')
  return os.path.join(root, name)


def has_ncf_files(directory: str, name: str) -> bool:
  return all(os.path.isfile(os.path.join(directory, f'{name}.{s}')) for s in NCF_SUFFIXES)


def ncf_name_in(directory: str) -> str:
  """The `<name>` of the single `<name>.train.rating` in `directory`."""
  found = sorted(glob.glob(os.path.join(directory, '*.train.rating')))
  if len(found) != 1:
    what = 'no' if not found else f'{len(found)}'
    raise DataError(f'{directory}: expected one <name>.train.rating file, found {what}')
  return os.path.basename(found[0])[:-len('.train.rating')]


def load_dataset(config) -> Dataset:
  """The dataset a config names: synthetic, or NCF files (fetched if missing).

  Reads `config.dataset`, `config.data_dir`, `config.validation`, `config.seed`
  (which seeds the validation holdout) and, for synthetic data, `config.synthetic`
  (whose own `seed` generates the data).
  """
  if config.dataset == SYNTHETIC:
    params = config.synthetic.to_dict()
    params.setdefault('seed', config.seed)  # workdirs written before synthetic.seed existed
    dataset = synthetic.generate(**params)
    if config.validation:
      dataset = carve_validation(dataset, config.seed, dataset.test.negatives.shape[1])
    return dataset
  if config.dataset not in REGISTRY and not config.data_dir:
    raise ConfigError(f'config.dataset: unknown dataset {config.dataset!r}; known: '
                      f'{", ".join([*REGISTRY, SYNTHETIC])}, or set config.data_dir to a '
                      'directory of NCF files')
  directory = config.data_dir or default_data_dir(config.dataset)
  name = config.dataset
  if not has_ncf_files(directory, name):
    if config.data_dir and glob.glob(os.path.join(directory, '*.train.rating')):
      name = ncf_name_in(directory)  # a directory the user prepared under another name
    elif config.dataset in REGISTRY:
      from ncf_jax.data import download  # pylint: disable=g-import-not-at-top
      download.fetch(REGISTRY[config.dataset], directory)
    else:
      raise DataError(f'{directory}: no {name}.train.rating / .test.rating / .test.negative')
  return load_ncf_dir(directory, name, validation=config.validation, seed=config.seed)
