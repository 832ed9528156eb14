"""Downloading a registered dataset: checked, atomic, with one-line errors.

A download goes to a temporary file next to its destination and is renamed
only once complete and verified, so an interrupted or corrupt transfer leaves
nothing behind that a later run could mistake for data; folders created for a
download that fails are removed again when they are empty.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from absl import logging

from ncf_jax.data import files, prepare
from ncf_jax.data.dataset import has_ncf_files
from ncf_jax.data.spec import DatasetSpec, default_data_dir
from ncf_jax.errors import DataError

DEFAULT_TIMEOUT = 60.0  # seconds without progress before a transfer is given up
_CHUNK = 1 << 20

# MD5 sums as GroupLens publishes them next to each archive (`<zip>.md5`), e.g.
# https://files.grouplens.org/datasets/movielens/ml-20m.zip.md5; the same values
# appear in many independent projects that verify these archives. Archives not
# listed here (test servers, mirrors) are checked with `ZipFile.testzip` only.
ARCHIVE_MD5 = {
    'https://files.grouplens.org/datasets/movielens/ml-100k.zip':
        '0e33842e24a9c977be4e0107933c0723',
    'https://files.grouplens.org/datasets/movielens/ml-20m.zip':
        'cd245b17a1ae2cc31bb14903e1204af3',
}

# What to do without a network; callers with other options pass their own hint.
COPY_FILES_HINT = ('to work offline, fetch the files on a machine with network access and copy '
                'them into the destination folder')


def cache_dir(name: str) -> str:
  """Where a registered dataset is cached: `$NCF_DATA_DIR/<name>` or `~/.cache/ncf_jax/<name>`.

  `$NCF_DATA_DIR`, when set, must be an existing directory: a typo in it should
  not become a new folder full of downloads.
  """
  root = os.environ.get('NCF_DATA_DIR')
  if root and not os.path.isdir(root):
    what = 'not a directory' if os.path.exists(root) else 'no such directory'
    raise DataError(f'$NCF_DATA_DIR={root}: {what}')
  return default_data_dir(name)


def download_directory(name: str, data_dir: str | None = None) -> str:
  """Where `data download` puts dataset `name`: `data_dir` if the user named one (its parent
  must exist: a typo should not become a tree of new folders), else the cache folder, which
  is created (with `~/.cache/ncf_jax` itself) on a fresh machine."""
  if data_dir is None:
    return cache_dir(name)
  parent = os.path.dirname(os.path.abspath(data_dir))
  if not os.path.isdir(parent):
    raise DataError(f'--data_dir={data_dir}: {parent}: no such directory')
  return data_dir


def _file_digests(path: str) -> tuple[str, str]:
  """Git blob sha1 and md5 of a file, read in chunks."""
  blob = hashlib.sha1(b'blob %d\0' % os.path.getsize(path))
  md5 = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      blob.update(chunk)
      md5.update(chunk)
  return blob.hexdigest(), md5.hexdigest()


def _url_error(error: BaseException) -> str:
  """A network error on one line: urllib's reason (the socket's error) when it has one."""
  return files.one_line(getattr(error, 'reason', None) or error)


def _transfer(url: str, out, timeout: float, hint: str) -> None:
  """Streams `url` into the open file `out`; DataError on any network failure."""
  received = 0
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      length = response.headers.get('Content-Length')
      while chunk := response.read(_CHUNK):
        received += len(chunk)
        out.write(chunk)
  except urllib.error.HTTPError as e:
    raise DataError(f'{url}: HTTP error {e.code} {_url_error(e)}; {hint}') from None
  except http.client.IncompleteRead as e:
    raise DataError(f'{url}: transfer cut short after {received + len(e.partial)} bytes; '
                    f'{hint}') from None
  except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
    what = 'cannot download' if received == 0 else f'transfer failed after {received} bytes'
    raise DataError(f'{url}: {what} ({_url_error(e)}); {hint}') from None
  # http.client returns a short body without complaint when the peer closes early.
  if length is not None and length.isdigit() and received != int(length):
    raise DataError(f'{url}: transfer cut short: received {received} of {length} bytes; '
                    f'{hint}')


def download_file(url: str, path: str, expected_blob: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT, expected_md5: str | None = None,
                  offline_hint: str = COPY_FILES_HINT) -> None:
  """Downloads `url` to `path`, checking its git blob id and/or md5 when given.

  On any failure raises DataError (network failures end with `offline_hint`)
  and leaves neither `path`, nor a temporary file, nor a folder it created.
  """
  directory = os.path.dirname(os.path.abspath(path))
  try:
    created = files.make_dirs(directory)
  except OSError as e:
    raise DataError(f'{directory}: cannot create ({files.one_line(e)})') from None
  logging.info('downloading %s to %s', url, path)
  try:
    try:
      tmp = files.write_temporary(
          path, lambda out: _transfer(url, _Writer(out, path), timeout, offline_hint), binary=True)
    except OSError as e:  # creating the file, or flushing it on close (disk full)
      raise DataError(f'{path}: cannot write ({files.one_line(e)})') from None
    try:
      _verify(url, path, tmp, expected_blob, expected_md5)
      os.replace(tmp, path)
    except BaseException:
      os.unlink(tmp)
      raise
  except BaseException:
    files.remove_empty_dirs(created)
    raise


def _verify(url: str, path: str, tmp: str, expected_blob: str | None,
            expected_md5: str | None) -> None:
  blob, md5 = _file_digests(tmp)
  for kind, expected, actual in (('git blob', expected_blob, blob), ('md5', expected_md5, md5)):
    if expected is not None and actual != expected.lower():
      raise DataError(f'{url}: downloaded file has {kind} {actual}, expected {expected} '
                      f'(corrupted in transfer or changed upstream); {path} not written')


class _Writer:
  """A file whose write errors (disk full, ...) become one-line DataErrors."""

  def __init__(self, out, path: str):
    self._out, self._path = out, path

  def write(self, data: bytes) -> None:
    try:
      self._out.write(data)
    except OSError as e:
      raise DataError(f'{self._path}: cannot write ({files.one_line(e)})') from None


def _extract(spec: DatasetSpec, archive: str, tmp: str) -> tuple[str, str | None]:
  """Extracts `spec.raw_member` into `tmp`; returns its path and the GroupLens README's text."""
  url = spec.raw_archive
  try:
    with zipfile.ZipFile(archive) as zf:
      if ARCHIVE_MD5.get(url) is None:  # no published checksum: check every member's CRC
        bad = zf.testzip()
        if bad is not None:
          raise DataError(f'{url}: archive member {bad} is corrupt (CRC mismatch)')
      names = zf.namelist()
      if spec.raw_member not in names:
        raise DataError(f'{url}: archive has no member {spec.raw_member}')
      raw = os.path.join(tmp, os.path.basename(spec.raw_member))
      with zf.open(spec.raw_member) as src, open(raw, 'wb') as dst:
        while chunk := src.read(_CHUNK):
          dst.write(chunk)
      folder = os.path.dirname(spec.raw_member)
      readme = [n for n in names if os.path.dirname(n) == folder
                and os.path.basename(n).upper().startswith('README')]
      text = zf.read(readme[0]).decode('utf-8', errors='replace') if readme else None
  except zipfile.BadZipFile as e:
    raise DataError(f'{url}: not a valid zip archive ({files.one_line(e)})') from None
  return raw, text


def fetch(spec: DatasetSpec, directory: str, timeout: float = DEFAULT_TIMEOUT,
          offline_hint: str = COPY_FILES_HINT) -> None:
  """Puts `spec`'s NCF files into `directory`, downloading what is missing.

  Files published in NCF format are downloaded one by one and checked against
  their git blob ids; files already present are left as they are (the loader
  validates them). A raw GroupLens archive is downloaded, checked, and turned
  into NCF files with `prepare.prepare` (seed 0, the spec's protocol preset).
  A failure removes the folders this call created, when they are empty.
  """
  if spec.ncf_files:
    for suffix, (url, blob) in spec.ncf_files.items():
      path = os.path.join(directory, f'{spec.name}.{suffix}')
      if not os.path.isfile(path):
        download_file(url, path, expected_blob=blob, timeout=timeout, offline_hint=offline_hint)
    return
  if spec.raw_archive is None or spec.raw_member is None or spec.raw_format is None:
    raise DataError(f'{spec.name}: the registry has neither NCF files nor a raw archive for it')
  if has_ncf_files(directory, spec.name):
    return
  try:
    created = files.make_dirs(directory)
  except OSError as e:
    raise DataError(f'{directory}: cannot create ({files.one_line(e)})') from None
  try:
    _fetch_raw(spec, directory, timeout, offline_hint)
  except BaseException:
    files.remove_empty_dirs(created)
    raise


def _fetch_raw(spec: DatasetSpec, directory: str, timeout: float, offline_hint: str) -> None:
  """Downloads, checks and prepares a raw archive; its README is kept beside the files."""
  with tempfile.TemporaryDirectory(dir=directory, prefix='.download.') as tmp:
    name = os.path.basename(urllib.parse.urlparse(spec.raw_archive).path) or 'archive.zip'
    archive = os.path.join(tmp, name)
    download_file(spec.raw_archive, archive, timeout=timeout,
                  expected_md5=ARCHIVE_MD5.get(spec.raw_archive), offline_hint=offline_hint)
    raw, readme = _extract(spec, archive, tmp)
    logging.info('preparing %s from %s', spec.name, spec.raw_member)
    prepare.prepare(raw, spec.raw_format, directory, name=spec.name,
                    protocol=prepare.PRESETS[spec.raw_preset])
  if readme is not None:  # MovieLens' terms ask users to read and cite it
    files.atomic_write_text(os.path.join(directory, 'GROUPLENS-README.txt'), readme)
