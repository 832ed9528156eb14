"""A run records what it trained on (folder and data fingerprint) and nobody mixes two runs:
readers find the data in any shell and refuse other data; a resume, an ensemble, a finished
pipeline stage on other data, or a hand-edited config.json is refused in one line."""

import hashlib
import json
import os
import urllib.request

import numpy as np
import pytest

from conftest import make_config, train_quietly
from ncf_jax import ensemble
from ncf_jax import pipeline
from ncf_jax import provenance
from ncf_jax import recommend
from ncf_jax import run_dir
from ncf_jax import run_settings
from ncf_jax.data import ncf_format
from ncf_jax.data import synthetic
from ncf_jax.errors import ConfigError, DataError

SMALL = dict(num_users=60, num_items=50, interactions_per_user=10, num_test_negatives=20)


def _write_folder(directory, seed: int, name: str = 'ml-1m') -> str:
  """A tiny dataset in NCF files named like ML-1M's."""
  data = synthetic.generate(**SMALL, seed=seed)
  os.makedirs(directory, exist_ok=True)
  path = lambda suffix: os.path.join(directory, f'{name}.{suffix}')
  for split, users, items in (('train', data.train_users, data.train_items),
                              ('test', data.test.users, data.test.items)):
    with open(path(f'{split}.rating'), 'w', encoding='utf-8') as f:
      f.write(ncf_format.ratings_text(users, items))
  ncf_format.write_negatives(path('test.negative'), data.test.users, data.test.items,
                             data.test.negatives)
  return str(directory)


def _reference_fingerprint(directory, name='ml-1m') -> str:
  """Independently: sha256 over each file's name and sha256, in file-name order."""
  digest = hashlib.sha256()
  for suffix in sorted(['test.negative', 'test.rating', 'train.rating']):
    with open(os.path.join(directory, f'{name}.{suffix}'), 'rb') as f:
      digest.update(f'{name}.{suffix}\0{hashlib.sha256(f.read()).hexdigest()}\n'.encode())
  return 'sha256:' + digest.hexdigest()[:32]


def _folder_config(**overrides):
  return make_config(**{'dataset': 'ml-1m', 'num_epochs': 1, **overrides})


def _saved(workdir) -> dict:
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    return json.load(f)


def _no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('tried to download')
  monkeypatch.setattr(urllib.request, 'urlopen', refuse)


@pytest.fixture
def env_run(tmp_path, monkeypatch):
  """A run trained with $NCF_DATA_DIR set (config.data_dir empty), in a fresh HOME."""
  root = tmp_path / 'data'
  folder = _write_folder(root / 'ml-1m', seed=1)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  monkeypatch.setenv('NCF_DATA_DIR', str(root))
  _no_network(monkeypatch)
  workdir = str(tmp_path / 'run')
  train_quietly(_folder_config(), workdir)
  return workdir, folder


def test_a_run_records_its_folder_and_fingerprint(env_run):
  workdir, folder = env_run
  recorded = _saved(workdir)['provenance']
  assert recorded['data_dir'] == os.path.abspath(folder)
  assert recorded['data_name'] == 'ml-1m'
  assert recorded['data_fingerprint'] == _reference_fingerprint(folder)
  assert not _saved(workdir)['data_dir']  # the config itself is what the user gave


def test_readers_use_the_recorded_folder_in_a_shell_without_ncf_data_dir(env_run, monkeypatch):
  workdir, _ = env_run
  monkeypatch.delenv('NCF_DATA_DIR')  # and HOME's cache is empty: a download would be tried
  rec = recommend.Recommender.from_workdir(workdir)
  assert len(rec.recommend(0, k=3)) == 3
  model, _, dataset = ensemble.load_ensemble([workdir])
  assert dataset.num_users == rec.num_users


def test_readers_refuse_changed_data_naming_both(env_run, monkeypatch):
  workdir, folder = env_run
  before = _reference_fingerprint(folder)
  _write_folder(folder, seed=2)  # same shapes, other interactions
  after = _reference_fingerprint(folder)
  assert before != after
  monkeypatch.delenv('NCF_DATA_DIR')
  with pytest.raises(DataError) as info:
    recommend.Recommender.from_workdir(workdir)
  message = str(info.value)
  assert before in message and after in message and '\n' not in message


def test_resume_on_other_data_is_refused(env_run, monkeypatch, tmp_path):
  workdir, folder = env_run
  other = _write_folder(tmp_path / 'other' / 'ml-1m', seed=3)
  records = run_dir.RunDir(workdir).read_metrics()
  with pytest.raises(DataError) as info:
    train_quietly(_folder_config(num_epochs=2, data_dir=other), workdir)
  message = str(info.value)
  assert _reference_fingerprint(folder) in message and _reference_fingerprint(other) in message
  assert '--restart' in message and '\n' not in message
  assert run_dir.RunDir(workdir).read_metrics() == records  # nothing trained or rewritten
  assert _saved(workdir)['provenance']['data_dir'] == os.path.abspath(folder)
  # --restart's way: the old run moved aside, a new one on the other data.
  moved = run_dir.RunDir(workdir).move_aside()
  train_quietly(_folder_config(data_dir=other), workdir)
  assert _saved(workdir)['provenance']['data_fingerprint'] == _reference_fingerprint(other)
  assert _saved(moved)['provenance']['data_fingerprint'] == _reference_fingerprint(folder)


def test_resume_on_a_copy_of_the_same_data_elsewhere_continues(env_run, tmp_path):
  workdir, folder = env_run
  copy = tmp_path / 'copy' / 'ml-1m'
  os.makedirs(copy)
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), 'rb') as src:
      (copy / name).write_bytes(src.read())
  _, history = train_quietly(_folder_config(num_epochs=2, data_dir=str(copy)), workdir)
  assert [r['epoch'] for r in history] == [0, 1, 2]


def test_resume_with_another_synthetic_seed_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  train_quietly(make_config(num_epochs=1), workdir)
  with pytest.raises(ConfigError, match=r'synthetic\.seed=.*--restart'):
    train_quietly(make_config(num_epochs=2, synthetic=dict(seed=5)), workdir)


def test_hand_edited_config_is_refused_on_resume_and_by_readers(tmp_path):
  workdir = str(tmp_path / 'run')
  config = make_config(num_epochs=1)
  train_quietly(config, workdir)
  saved = _saved(workdir)
  saved['num_negatives'] = 7
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(saved, f)
  edited = make_config(num_epochs=2, num_negatives=7)  # a command that agrees with the edit
  with pytest.raises(ConfigError) as info:
    train_quietly(edited, workdir)
  assert 'num_negatives is 7 but the run was trained with 4 (edited by hand' in str(info.value)
  with pytest.raises(ConfigError, match='edited by hand'):
    recommend.Recommender.from_workdir(workdir)
  # Fields that do not change the computation may be edited.
  saved['num_negatives'], saved['num_epochs'] = 4, 9
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(saved, f)
  recommend.Recommender.from_workdir(workdir)


def test_ensemble_refuses_members_trained_on_different_data(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  a = _write_folder(tmp_path / 'a' / 'ml-1m', seed=1)
  b = _write_folder(tmp_path / 'b' / 'ml-1m', seed=2)
  train_quietly(_folder_config(data_dir=a), str(tmp_path / 'ra'))
  train_quietly(_folder_config(data_dir=b), str(tmp_path / 'rb'))
  with pytest.raises(DataError) as info:
    ensemble.load_ensemble([str(tmp_path / 'ra'), str(tmp_path / 'rb')])
  message = str(info.value)
  assert _reference_fingerprint(a) in message and _reference_fingerprint(b) in message


def test_finished_pipeline_stage_on_other_data_is_refused(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  a = _write_folder(tmp_path / 'a' / 'ml-1m', seed=1)
  b = _write_folder(tmp_path / 'b' / 'ml-1m', seed=2)
  config = make_config(dataset='ml-1m', num_epochs=1, data_dir=a)
  pipeline.run_pipeline(config, str(tmp_path / 'pipe'))
  config.data_dir = b
  with pytest.raises(DataError, match=_reference_fingerprint(b)):
    pipeline.run_pipeline(config, str(tmp_path / 'pipe'))


def test_pretrained_towers_on_other_data_are_refused(tmp_path):
  fake = run_dir.RunDir(str(tmp_path / 'gmf'))
  os.makedirs(fake.path)
  fake.write_config(run_settings.config_json(make_config(model='gmf')))
  provenance.record(fake, dict(data_dir='/elsewhere', data_name='x',
                               data_fingerprint='sha256:0000', computing_fields={}))
  dataset = synthetic.generate(**SMALL)
  sources = run_settings.PretrainSources(gmf_workdir=fake.path, mlp_workdir='', alpha=0.5)
  with pytest.raises(DataError, match=r'sha256:0000 \(/elsewhere\).*config.gmf_workdir'):
    provenance.check_sources(sources, dataset)


def test_synthetic_fingerprint_is_the_data_not_the_validation_carve():
  from ncf_jax.data.dataset import carve_validation  # pylint: disable=g-import-not-at-top
  data = synthetic.generate(**SMALL, seed=0)
  carved = [carve_validation(data, seed=s, num_negatives=20) for s in (0, 1)]
  assert not np.array_equal(carved[0].valid.negatives, carved[1].valid.negatives)
  fingerprints = {provenance.arrays_fingerprint(d) for d in [data, *carved]}
  assert len(fingerprints) == 1
  assert provenance.arrays_fingerprint(synthetic.generate(**SMALL, seed=1)) not in fingerprints
