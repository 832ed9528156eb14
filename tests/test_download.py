"""Downloads against a real HTTP server on 127.0.0.1: success, and failures that leave nothing."""

import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile

import numpy as np
import pytest

from conftest import git_blob_sha1

from ncf_jax.data import dataset as dataset_lib
from ncf_jax.data import download
from ncf_jax.data import registry
from ncf_jax.errors import DataError

GOOD = b'0\t1\t1\t0\n1\t2\t1\t0\n' * 50


def _ncf_files() -> dict[str, bytes]:
  """A tiny valid NCF dataset `toy`: 3 users, 5 items."""
  return {
      'train.rating': b'0\t0\t1\t5\n0\t1\t1\t6\n1\t1\t1\t7\n1\t2\t1\t8\n2\t3\t1\t9\n',
      'test.rating': b'0\t2\t1\t0\n1\t3\t1\t0\n2\t4\t1\t0\n',
      'test.negative': b'(0,2)\t3\t4\n(1,3)\t0\t4\n(2,4)\t0\t1\n',
  }


def _raw_zip(corrupt: bool = False) -> bytes:
  """An ML-100K-like archive: `toy/u.data` (25 users x 20 of 130 items) and a README."""
  rng = np.random.default_rng(0)
  lines = []
  for user in range(1, 26):
    for item in rng.choice(np.arange(1, 131), 20, replace=False):
      lines.append(f'{user}\t{item}\t{rng.integers(1, 6)}\t{rng.integers(10**8, 10**9)}\n')
  data = ''.join(lines).encode()
  out = io.BytesIO()
  with zipfile.ZipFile(out, 'w', zipfile.ZIP_STORED) as zf:
    zf.writestr('toy/README', 'MovieLens-like test data.\n')
    zf.writestr('toy/u.data', data)
  archive = out.getvalue()
  if corrupt:  # flip a byte inside the stored u.data: its CRC no longer matches
    at = archive.index(data[:40]) + 10
    archive = archive[:at] + bytes([archive[at] ^ 1]) + archive[at + 1:]
  return archive


ROUTES = {
    '/good.txt': GOOD,
    '/corrupt.txt': GOOD[:-2] + b'9\n',
    '/raw/toy.zip': _raw_zip(),
    '/raw/bad-crc.zip': _raw_zip(corrupt=True),
    '/raw/not-a.zip': b'this is not a zip archive',
    **{f'/ncf/toy.{suffix}': text for suffix, text in _ncf_files().items()},
}


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves ROUTES; /truncated.txt promises more bytes than it sends; else 404."""

  def do_GET(self):  # pylint: disable=invalid-name
    if self.path == '/truncated.txt':
      self.send_response(200)
      self.send_header('Content-Length', str(len(GOOD) + 1000))
      self.end_headers()
      self.wfile.write(GOOD)
      self.wfile.flush()
      self.close_connection = True
      return
    body = ROUTES.get(self.path)
    if body is None:
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture(scope='module')
def server():
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}'
  httpd.shutdown()
  httpd.server_close()


def test_git_blob_sha1_matches_git():
  # `git hash-object` of an empty file and of "hello\n".
  assert git_blob_sha1(b'') == 'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'
  assert git_blob_sha1(b'hello\n') == 'ce013625030ba8dba906f756967f9e9ca394464a'


def test_download_verifies_and_renames(server, tmp_path):
  path = tmp_path / 'sub' / 'good.txt'
  download.download_file(f'{server}/good.txt', str(path),
                         expected_blob=git_blob_sha1(GOOD),
                         expected_md5=hashlib.md5(GOOD).hexdigest())
  assert path.read_bytes() == GOOD
  assert os.listdir(path.parent) == ['good.txt']


# name -> (url path, what the one-line error must say)
FAILURES = {
    'blob mismatch': ('/corrupt.txt', 'git blob'),
    'truncated': ('/truncated.txt', 'cut short'),
    'not found': ('/missing.txt', 'HTTP error 404'),
}


@pytest.mark.parametrize('case', sorted(FAILURES))
def test_failed_download_leaves_nothing(server, tmp_path, case):
  route, words = FAILURES[case]
  path = tmp_path / 'file.txt'
  url = f'{server}{route}'
  with pytest.raises(DataError) as info:
    download.download_file(url, str(path), expected_blob=git_blob_sha1(GOOD),
                           timeout=10)
  message = str(info.value)
  assert message.startswith(url) and words in message and '\n' not in message, message
  assert os.listdir(tmp_path) == []  # neither the file nor a temporary one


def test_md5_mismatch_leaves_nothing(server, tmp_path):
  with pytest.raises(DataError, match='md5'):
    download.download_file(f'{server}/good.txt', str(tmp_path / 'f'), expected_md5='0' * 32)
  assert os.listdir(tmp_path) == []


def _closed_port() -> int:
  with socket.socket() as s:  # a port that nothing listens on
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_network_failure_says_how_to_work_offline(tmp_path):
  url = f'http://127.0.0.1:{_closed_port()}/x'
  with pytest.raises(DataError) as info:
    download.download_file(url, str(tmp_path / 'new' / 'x'), timeout=5)
  message = str(info.value)
  assert 'cannot download' in message and '\n' not in message
  assert message.endswith(download.COPY_FILES_HINT) and '--' not in download.COPY_FILES_HINT
  assert os.listdir(tmp_path) == []  # not even the folder it created
  with pytest.raises(DataError, match='use --config.dataset=synthetic$'):
    download.download_file(url, str(tmp_path / 'x'), timeout=5,
                           offline_hint=registry.DATA_DIR_HINT)


def test_offline_fetch_leaves_no_cache_folder(tmp_path):
  spec = _raw_spec(f'http://127.0.0.1:{_closed_port()}', '/raw/toy.zip')
  with pytest.raises(DataError, match='cannot download'):
    download.fetch(spec, str(tmp_path / 'cache' / 'ncf_jax' / 'toy-100k'), timeout=5)
  assert os.listdir(tmp_path) == []


def _ncf_spec(server: str, blobs: dict | None = None) -> registry.DatasetSpec:
  files = _ncf_files()
  blobs = blobs or {s: git_blob_sha1(text) for s, text in files.items()}
  return registry.DatasetSpec('toy', {s: (f'{server}/ncf/toy.{s}', blobs[s]) for s in files})


def test_fetch_ncf_files_then_load(server, tmp_path):
  directory = str(tmp_path / 'toy')
  download.fetch(_ncf_spec(server), directory)
  assert sorted(os.listdir(directory)) == sorted(f'toy.{s}' for s in registry.NCF_SUFFIXES)
  data = dataset_lib.load_ncf_dir(directory, 'toy')
  assert (data.num_users, data.num_items, data.num_train, len(data.test)) == (3, 5, 5, 3)


def test_fetch_keeps_files_already_present(server, tmp_path):
  local = b'0\t0\t1\t5\n0\t1\t1\t6\n1\t1\t1\t7\n2\t3\t1\t9\n'  # not the served file
  (tmp_path / 'toy.train.rating').write_bytes(local)
  download.fetch(_ncf_spec(server), str(tmp_path))
  assert (tmp_path / 'toy.train.rating').read_bytes() == local
  assert registry.has_ncf_files(str(tmp_path), 'toy')


def test_fetch_with_a_corrupt_file_keeps_it_out(server, tmp_path):
  blobs = {s: git_blob_sha1(t) for s, t in _ncf_files().items()}
  blobs['test.negative'] = '0' * 40
  with pytest.raises(DataError, match='toy.test.negative: downloaded file has git blob'):
    download.fetch(_ncf_spec(server, blobs), str(tmp_path))
  assert 'toy.test.negative' not in os.listdir(tmp_path)
  assert not [f for f in os.listdir(tmp_path) if f.startswith('.')]


def _raw_spec(server: str, route: str) -> registry.DatasetSpec:
  return registry.DatasetSpec('toy-100k', raw_archive=f'{server}{route}',
                              raw_member='toy/u.data', raw_format='ml-100k')


def test_fetch_raw_archive_then_load(server, tmp_path):
  directory = str(tmp_path / 'toy-100k')
  download.fetch(_raw_spec(server, '/raw/toy.zip'), directory)
  assert sorted(os.listdir(directory)) == sorted(
      ['GROUPLENS-README.txt', 'dataset.json', 'users.tsv', 'items.tsv']
      + [f'toy-100k.{s}' for s in registry.NCF_SUFFIXES])
  data = dataset_lib.load_ncf_dir(directory, 'toy-100k')
  assert (data.num_users, data.num_train, len(data.test)) == (25, 25 * 19, 25)
  assert data.test.negatives.shape == (25, 99)


@pytest.mark.parametrize('route,words', [('/raw/bad-crc.zip', 'corrupt'),
                                         ('/raw/not-a.zip', 'not a valid zip'),
                                         ('/raw/missing.zip', 'HTTP error 404')])
def test_fetch_bad_archive_leaves_nothing(server, tmp_path, route, words):
  with pytest.raises(DataError, match=words):
    download.fetch(_raw_spec(server, route), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_archive_checksums_are_known_for_grouplens():
  for spec in registry.REGISTRY.values():
    if spec.raw_archive is not None:
      assert len(download.ARCHIVE_MD5[spec.raw_archive]) == 32
