"""Named datasets: what they are and where they come from (no I/O here).

Shared by `registry` (which loads them) and `download` (which fetches them).
"""

import dataclasses
import os

_NCF_REPO = ('https://raw.githubusercontent.com/hexiangnan/neural_collaborative_filtering/'
             'master/Data')
_GROUPLENS = 'https://files.grouplens.org/datasets/movielens'
NCF_SUFFIXES = ('train.rating', 'test.rating', 'test.negative')
SYNTHETIC = 'synthetic'


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to obtain a named dataset's NCF files.

  `ncf_files`: suffix -> (url, git blob sha1) for files published in NCF format.
  `raw_archive`/`raw_member`/`raw_format`: a GroupLens zip to download and
  turn into NCF files with `ncf_jax.data.prepare`, with the protocol preset
  `raw_preset` (see `prepare.PRESETS`).
  """
  name: str
  ncf_files: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
  raw_archive: str | None = None
  raw_member: str | None = None
  raw_format: str | None = None
  raw_preset: str = 'paper'


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
        # The paper's protocol (99 test negatives) on ML-20M ...
        DatasetSpec('ml-20m', raw_archive=f'{_GROUPLENS}/ml-20m.zip',
                    raw_member='ml-20m/ratings.csv', raw_format='ml-20m'),
        # ... and MLPerf v0.5's (999 test negatives, stored as .npy).
        DatasetSpec('ml-20m-mlperf', raw_archive=f'{_GROUPLENS}/ml-20m.zip',
                    raw_member='ml-20m/ratings.csv', raw_format='ml-20m', raw_preset='mlperf'),
    )
}


def cache_root() -> str:
  """`$NCF_DATA_DIR` if set, else `~/.cache/ncf_jax`: where downloads go."""
  return os.environ.get('NCF_DATA_DIR') or os.path.join(os.path.expanduser('~'), '.cache',
                                                        'ncf_jax')


def default_data_dir(name: str) -> str:
  """`$NCF_DATA_DIR/<name>` if that variable is set, else `~/.cache/ncf_jax/<name>`."""
  return os.path.join(cache_root(), name)
