"""`data download` on a fresh machine: the default cache folder is created; offline, one line
naming the URL; a folder the user named keeps its typo check."""

import io
import os
import urllib.error
import urllib.request

import pytest

from conftest import git_blob_sha1

from ncf_jax.data import download
from ncf_jax.data import spec as spec_lib
from ncf_jax.errors import DataError


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
  home = tmp_path / 'home'
  home.mkdir()
  monkeypatch.setenv('HOME', str(home))
  monkeypatch.delenv('NCF_DATA_DIR', raising=False)
  return home


class _Response(io.BytesIO):
  def __init__(self, data: bytes):
    super().__init__(data)
    self.headers = {'Content-Length': str(len(data))}


def test_default_folder_is_created_on_a_fresh_machine(fresh_home, monkeypatch):
  files = {'train.rating': b'0\t0\t1\t0\n', 'test.rating': b'0\t1\t1\t0\n',
           'test.negative': b'(0,1)\t2\n'}
  spec = spec_lib.DatasetSpec('toy', {suffix: (f'http://example.invalid/toy.{suffix}',
                                               git_blob_sha1(data))
                                      for suffix, data in files.items()})
  served = {f'http://example.invalid/toy.{s}': d for s, d in files.items()}
  monkeypatch.setattr(urllib.request, 'urlopen', lambda url, timeout: _Response(served[url]))
  directory = download.download_directory('toy')
  assert directory == str(fresh_home / '.cache' / 'ncf_jax' / 'toy')
  assert not os.path.exists(fresh_home / '.cache')  # nothing before the fetch
  download.fetch(spec, directory)
  for suffix, data in files.items():
    assert (fresh_home / '.cache' / 'ncf_jax' / 'toy' / f'toy.{suffix}').read_bytes() == data


def test_offline_it_fails_on_the_network_naming_the_url(fresh_home, monkeypatch):
  def offline(url, timeout):
    raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
  monkeypatch.setattr(urllib.request, 'urlopen', offline)
  spec = spec_lib.REGISTRY['ml-1m']
  directory = download.download_directory('ml-1m')
  with pytest.raises(DataError) as info:
    download.fetch(spec, directory)
  message = str(info.value)
  first_url = next(iter(spec.ncf_files.values()))[0]
  assert message.startswith(f'{first_url}: cannot download') and '\n' not in message
  assert 'no such directory' not in message
  assert not os.path.exists(fresh_home / '.cache')  # the folders it made are gone again


def test_a_named_folder_keeps_its_typo_check(tmp_path):
  with pytest.raises(DataError, match=f'{tmp_path}/typo: no such directory'):
    download.download_directory('ml-1m', str(tmp_path / 'typo' / 'ml-1m'))
  assert download.download_directory('ml-1m', str(tmp_path / 'ml-1m')) == str(tmp_path / 'ml-1m')


def test_a_misspelt_ncf_data_dir_is_refused(tmp_path, monkeypatch):
  monkeypatch.setenv('NCF_DATA_DIR', str(tmp_path / 'typo'))
  with pytest.raises(DataError, match=r'\$NCF_DATA_DIR=.*typo: no such directory'):
    download.download_directory('ml-1m')
