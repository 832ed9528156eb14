"""Downloading a registered dataset: checked, atomic, with one-line errors.

A download goes to a temporary file next to its destination and is renamed
only once complete and verified, so an interrupted or corrupt transfer leaves
nothing behind that a later run could mistake for data.
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

from ncf_jax.data import ncf_format, prepare, registry
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

OFFLINE_HINT = ('to work offline, put the files in a directory and set --config.data_dir=DIR '
                '(or $NCF_DATA_DIR to the folder above it), or use --config.dataset=synthetic')


def git_blob_sha1(data: bytes) -> str:
  """The id git gives a file with these bytes (`git hash-object`)."""
  return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _file_digests(path: str) -> tuple[str, str]:
  """Git blob sha1 and md5 of a file, read in chunks."""
  blob = hashlib.sha1(b'blob %d\0' % os.path.getsize(path))
  md5 = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      blob.update(chunk)
      md5.update(chunk)
  return blob.hexdigest(), md5.hexdigest()


def _one_line(error: BaseException) -> str:
  text = str(getattr(error, 'reason', None) or error) or type(error).__name__
  return ' '.join(text.split())


def _transfer(url: str, out, timeout: float) -> None:
  """Streams `url` into the open file `out`; DataError on any network failure."""
  received = 0
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      length = response.headers.get('Content-Length')
      while chunk := response.read(_CHUNK):
        received += len(chunk)
        out.write(chunk)
  except urllib.error.HTTPError as e:
    raise DataError(f'{url}: HTTP error {e.code} {_one_line(e)}; {OFFLINE_HINT}') from None
  except http.client.IncompleteRead as e:
    raise DataError(f'{url}: transfer cut short after {received + len(e.partial)} bytes; '
                    f'{OFFLINE_HINT}') from None
  except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
    what = 'cannot download' if received == 0 else f'transfer failed after {received} bytes'
    raise DataError(f'{url}: {what} ({_one_line(e)}); {OFFLINE_HINT}') from None
  # http.client returns a short body without complaint when the peer closes early.
  if length is not None and length.isdigit() and received != int(length):
    raise DataError(f'{url}: transfer cut short: received {received} of {length} bytes; '
                    f'{OFFLINE_HINT}')


def download_file(url: str, path: str, expected_blob: str | None = None,
                  timeout: float = DEFAULT_TIMEOUT, expected_md5: str | None = None) -> None:
  """Downloads `url` to `path`, checking its git blob id and/or md5 when given.

  On any failure raises DataError and leaves neither `path` nor a temporary file.
  """
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.',
                               suffix='.part')
  except OSError as e:
    raise DataError(f'{directory}: cannot create a file there ({_one_line(e)})') from None
  logging.info('downloading %s to %s', url, path)
  try:
    try:
      with os.fdopen(fd, 'wb') as out:
        _transfer(url, _Writer(out, path), timeout)
    except OSError as e:  # flushing on close can fail too (disk full)
      raise DataError(f'{path}: cannot write ({_one_line(e)})') from None
    blob, md5 = _file_digests(tmp)
    for kind, expected, actual in (('git blob', expected_blob, blob), ('md5', expected_md5, md5)):
      if expected is not None and actual != expected.lower():
        raise DataError(f'{url}: downloaded file has {kind} {actual}, expected {expected} '
                        f'(corrupted in transfer or changed upstream); {path} not written')
    os.chmod(tmp, ncf_format.FILE_MODE)  # mkstemp's files are private
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


class _Writer:
  """A file whose write errors (disk full, ...) become one-line DataErrors."""

  def __init__(self, out, path: str):
    self._out, self._path = out, path

  def write(self, data: bytes) -> None:
    try:
      self._out.write(data)
    except OSError as e:
      raise DataError(f'{self._path}: cannot write ({_one_line(e)})') from None


def _extract(spec: registry.DatasetSpec, archive: str, tmp: str, directory: str) -> str:
  """Extracts `spec.raw_member` into `tmp` and the GroupLens README into `directory`."""
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
      # MovieLens' terms ask users to read and cite it: keep its README with the data.
      folder = os.path.dirname(spec.raw_member)
      readme = [n for n in names if os.path.dirname(n) == folder
                and os.path.basename(n).upper().startswith('README')]
      if readme:
        text = zf.read(readme[0]).decode('utf-8', errors='replace')
        ncf_format.atomic_write_text(os.path.join(directory, 'GROUPLENS-README.txt'), text)
  except zipfile.BadZipFile as e:
    raise DataError(f'{url}: not a valid zip archive ({_one_line(e)})') from None
  return raw


def fetch(spec: registry.DatasetSpec, directory: str, timeout: float = DEFAULT_TIMEOUT) -> None:
  """Puts `spec`'s NCF files into `directory`, downloading what is missing.

  Files published in NCF format are downloaded one by one and checked against
  their git blob ids; files already present are left as they are (the loader
  validates them). A raw GroupLens archive is downloaded, checked, and turned
  into NCF files with `prepare.prepare` (seed 0).
  """
  if spec.ncf_files:
    for suffix, (url, blob) in spec.ncf_files.items():
      path = os.path.join(directory, f'{spec.name}.{suffix}')
      if not os.path.isfile(path):
        download_file(url, path, expected_blob=blob, timeout=timeout)
    return
  if spec.raw_archive is None or spec.raw_member is None or spec.raw_format is None:
    raise DataError(f'{spec.name}: the registry has neither NCF files nor a raw archive for it')
  if registry.has_ncf_files(directory, spec.name):
    return
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise DataError(f'{directory}: cannot create ({_one_line(e)})') from None
  with tempfile.TemporaryDirectory(dir=directory, prefix='.download.') as tmp:
    name = os.path.basename(urllib.parse.urlparse(spec.raw_archive).path) or 'archive.zip'
    archive = os.path.join(tmp, name)
    download_file(spec.raw_archive, archive, timeout=timeout,
                  expected_md5=ARCHIVE_MD5.get(spec.raw_archive))
    raw = _extract(spec, archive, tmp, directory)
    logging.info('preparing %s from %s', spec.name, spec.raw_member)
    prepare.prepare(raw, spec.raw_format, directory, name=spec.name)
