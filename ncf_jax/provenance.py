"""What a run trained on, recorded beside its config and checked by whoever uses the run.

config.json holds, next to the config fields, a `provenance` object:

  data_dir          the absolute folder the data files were read from (null: synthetic data)
  data_name         their file stem (`ml-1m` for ml-1m.train.rating, ...)
  data_fingerprint  sha256 of the data: of each file the loader reads (NCF files, negatives,
                    id maps), or of the generated arrays for synthetic data
  computing_fields  the config fields that change what is computed, as the run wrote them

Readers (`recommend`, `ensemble`, reports) load the data from `data_dir` when it is there,
whatever the shell's `$NCF_DATA_DIR`, and refuse data with another fingerprint. A resume
(or a finished pipeline stage run again) is refused when its data or a computing field
differs from the run's (except the learning rate, which a diverged run lowers), and so is a config.json whose computing fields were edited by hand:
`--restart` starts over. Every refusal is one line naming both sides.

Files are hashed once per process and (path, size, mtime) — a changed file is hashed again.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

from ncf_jax import run_dir as run_dir_lib
from ncf_jax import run_settings
from ncf_jax.config_fields import PROVENANCE, computing_fields, differing_fields, flat_fields
from ncf_jax.data import id_maps
from ncf_jax.data import registry
from ncf_jax.data.dataset import Dataset
from ncf_jax.data.files import atomic_write_text
from ncf_jax.data.spec import SYNTHETIC
from ncf_jax.errors import ConfigError, DataError

KEY = PROVENANCE  # config.json's key of the provenance object
# Files a data folder's loader may read, after `<name>.`; id maps change what a run's ids mean.
_DATA_SUFFIXES = ('train.rating', 'test.rating', 'test.negative', 'test.negative.npy',
                  'valid.rating', 'valid.negative', 'valid.negative.npy')
_SHARED_FILES = (id_maps.USERS, id_maps.ITEMS)
# Not compared on resume: the folder may move (its fingerprint is what must agree).
_LOCATION_FIELDS = ('data_dir',)
# May change on resume, with a note: a diverged run resumes with a smaller learning rate.
RESUMABLE_CHANGES = ('learning_rate',)
_CHUNK = 1 << 22
_file_digests: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: str) -> str:
  stat = os.stat(path)
  key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
  if key not in _file_digests:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
      while chunk := f.read(_CHUNK):
        digest.update(chunk)
    _file_digests[key] = digest.hexdigest()
  return _file_digests[key]


def data_files(directory: str, name: str) -> list[str]:
  """The files of `name` in `directory` that the loader reads, by file name."""
  names = [f'{name}.{suffix}' for suffix in _DATA_SUFFIXES] + list(_SHARED_FILES)
  return [os.path.join(directory, n) for n in sorted(names)
          if os.path.isfile(os.path.join(directory, n))]


def folder_fingerprint(directory: str, name: str) -> str:
  """sha256 over (file name, sha256 of its bytes) of `data_files(directory, name)`."""
  digest = hashlib.sha256()
  for path in data_files(directory, name):
    digest.update(f'{os.path.basename(path)}\0{_file_sha256(path)}\n'.encode())
  return 'sha256:' + digest.hexdigest()[:32]


def arrays_fingerprint(dataset: Dataset) -> str:
  """sha256 of a dataset made in memory (synthetic): its interactions (training pairs and a
  carved validation holdout together, so runs whose seeds carve other holdouts from the
  same data agree) and its test rows with their negatives."""
  pairs = [dataset.train_users.astype(np.int64) * dataset.num_items + dataset.train_items]
  if dataset.valid is not None:
    pairs.append(dataset.valid.users.astype(np.int64) * dataset.num_items + dataset.valid.items)
  digest = hashlib.sha256(f'{dataset.num_users} {dataset.num_items}\n'.encode())
  for array in (np.sort(np.concatenate(pairs)), dataset.test.users, dataset.test.items,
                dataset.test.negatives):
    array = np.ascontiguousarray(array)
    digest.update(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(array.tobytes())
  return 'sha256:' + digest.hexdigest()[:32]


def dataset_fingerprint(dataset: Dataset) -> str:
  if dataset.source_dir is not None:
    return folder_fingerprint(dataset.source_dir, dataset.name)
  return arrays_fingerprint(dataset)


def _differences(ours: dict, theirs: dict, only_theirs: bool = False) -> list[str]:
  """Dotted fields whose values differ (`only_theirs`: fields `theirs` has)."""
  differ = differing_fields(ours, theirs)
  return [k for k in differ if k in flat_fields(theirs)] if only_theirs else differ


def describe(computing: dict, dataset: Dataset) -> dict:
  """The provenance object of a run on `dataset` whose config's computing fields are
  `computing` (`config_fields.computing_fields`)."""
  return dict(data_dir=dataset.source_dir, data_name=dataset.name,
              data_fingerprint=dataset_fingerprint(dataset), computing_fields=computing)


def _read_json(run: run_dir_lib.RunDir) -> dict | None:
  if not os.path.isfile(run.file(run_dir_lib.CONFIG)):
    return None
  return run.read_config_json()


def recorded(run: run_dir_lib.RunDir) -> dict | None:
  """The run's provenance object; None for a run written before provenance was recorded."""
  saved = _read_json(run)
  return None if saved is None else saved.get(KEY)


def record(run: run_dir_lib.RunDir, provenance: dict) -> None:
  """Adds `provenance` to the run's config.json (written just before by `write_config`)."""
  saved = _read_json(run)
  saved[KEY] = provenance
  atomic_write_text(run.file(run_dir_lib.CONFIG),
                                json.dumps(saved, indent=2, sort_keys=True, allow_nan=False)
                                + '\n')


def _show(value) -> str:
  return json.dumps(value)


def check_not_edited(run: run_dir_lib.RunDir) -> None:
  """ConfigError if a computing field of config.json differs from what the run recorded."""
  saved = _read_json(run)
  if saved is None or KEY not in saved:
    return
  written, now = saved[KEY].get('computing_fields', {}), computing_fields(saved)
  edited = _differences(now, written)
  if edited:
    k = edited[0]
    written, now = flat_fields(written), flat_fields(now)
    raise ConfigError(f'{run.file(run_dir_lib.CONFIG)}: {k} is {_show(now.get(k))} but the run '
                      f'was trained with {_show(written.get(k))} (edited by hand'
                      + (f'; also {", ".join(edited[1:])}' if edited[1:] else '')
                      + '); put the value back, or --restart to start a new run')


def _data_mismatch(where: str, trained: dict, directory: str | None, fingerprint: str) -> str:
  return (f'{where}: was trained on data {trained.get("data_fingerprint")} '
          f'({trained.get("data_dir") or "synthetic"}), but the data now is {fingerprint} '
          f'({directory or "synthetic"})')


def check_same_run(run: run_dir_lib.RunDir, computing: dict, directory: str | None,
                   fingerprint: str) -> list[str]:
  """Before resuming (or skipping as finished) the run in `run` with a config of computing
  fields `computing` on data of `fingerprint`: ConfigError/DataError, one line, if it would
  mix two runs. Returns the fields of RESUMABLE_CHANGES that differ (for a note)."""
  saved = _read_json(run)
  if saved is None:
    return []
  check_not_edited(run)
  ours, theirs = computing, computing_fields(saved)
  differ = [k for k in _differences(ours, theirs, only_theirs=True) if k not in _LOCATION_FIELDS]
  changed = [k for k in differ if k not in RESUMABLE_CHANGES]
  ours, theirs = flat_fields(ours), flat_fields(theirs)
  if changed:
    k = changed[0]
    raise ConfigError(f'{run.path}: the run there was trained with {k}={_show(theirs[k])}, '
                      f'this command has {_show(ours.get(k))}'
                      + (f' (also {", ".join(changed[1:])})' if changed[1:] else '')
                      + '; --restart to start over, or another --workdir')
  trained = saved.get(KEY)
  if trained is not None and trained.get('data_fingerprint') != fingerprint:
    raise DataError(_data_mismatch(run.path, trained, directory, fingerprint)
                    + '; --restart to start over on this data, or another --workdir')
  return [k for k in differ if k in RESUMABLE_CHANGES]


def data_identity(data: registry.DataSettings) -> tuple[str | None, str]:
  """(absolute folder or None, fingerprint) of the data `data` names, without parsing the
  files when they are there (synthetic data is generated)."""
  directory = None
  if data.dataset != SYNTHETIC:
    if data.data_dir:
      directory = data.data_dir
    elif data.dataset in registry.REGISTRY:
      directory = registry.default_data_dir(data.dataset)
  if directory is not None and registry.has_ncf_files(directory, data.dataset):
    return os.path.abspath(directory), folder_fingerprint(directory, data.dataset)
  dataset = registry.load_dataset(data)
  return dataset.source_dir, dataset_fingerprint(dataset)


def load_run_dataset(workdir: str, data_dir: str | None = None) -> Dataset:
  """The dataset a trained run used: from `data_dir` if given, else from the folder the run
  recorded (if it still exists), else where its config points in this shell; DataError if
  its fingerprint is not the one the run trained on."""
  run = run_dir_lib.RunDir(workdir)
  data = run_settings.data_settings(run.read_config())
  check_not_edited(run)
  trained = recorded(run)
  folder = data_dir or (trained or {}).get('data_dir')
  if folder and (data_dir or os.path.isdir(folder)) and data.dataset != SYNTHETIC:
    data = dataclasses.replace(data, data_dir=folder)
  dataset = registry.load_dataset(data)
  if trained is not None:
    fingerprint = dataset_fingerprint(dataset)
    if fingerprint != trained.get('data_fingerprint'):
      raise DataError(_data_mismatch(run.path, trained, dataset.source_dir, fingerprint))
  return dataset


def check_same_data(workdirs: list[str]) -> None:
  """DataError if two runs recorded different data fingerprints (e.g. ensemble members)."""
  first = None
  for workdir in workdirs:
    trained = recorded(run_dir_lib.RunDir(workdir))
    if trained is None:
      continue
    if first is None:
      first = (workdir, trained)
    elif trained.get('data_fingerprint') != first[1].get('data_fingerprint'):
      raise DataError(f'{workdir}: trained on data {trained.get("data_fingerprint")} '
                      f'({trained.get("data_dir") or "synthetic"}), but {first[0]} on '
                      f'{first[1].get("data_fingerprint")} '
                      f'({first[1].get("data_dir") or "synthetic"})')


def check_sources(sources: run_settings.PretrainSources, dataset: Dataset) -> None:
  """For a pretrained NeuMF: its GMF and MLP runs trained on this dataset (DataError)."""
  fingerprint = None
  for key in ('gmf_workdir', 'mlp_workdir'):
    workdir = getattr(sources, key)
    trained = recorded(run_dir_lib.RunDir(workdir)) if workdir else None
    if trained is None:
      continue
    fingerprint = fingerprint or dataset_fingerprint(dataset)
    if trained.get('data_fingerprint') != fingerprint:
      raise DataError(_data_mismatch(os.path.abspath(workdir), trained, dataset.source_dir,
                                     fingerprint) + f' (config.{key})')
