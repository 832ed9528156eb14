"""Writing files so that a reader never sees half of one, and one-line OS errors.

`atomic_write_text` is the project's one atomic write: a temporary file in the
destination's folder, renamed over the destination once complete. Temporary
files are created with mode 0o666 and the process umask, as `open()` would
create the destination, so nothing here reads or changes the umask.
"""

import os
import secrets
from typing import Callable, IO

from ncf_jax import interrupts
from ncf_jax.errors import DataError


def one_line(error: BaseException) -> str:
  """An exception's message on one line (strerror for OSError, without the path)."""
  text = getattr(error, 'strerror', None) or str(error) or type(error).__name__
  return ' '.join(str(text).split())


def _create_temporary(path: str) -> tuple[int, str]:
  """Opens a new, uniquely named hidden file beside `path` for writing."""
  directory, base = os.path.split(os.path.abspath(path))
  while True:
    tmp = os.path.join(directory, f'.{base}.{secrets.token_hex(6)}.tmp')
    try:
      return os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), tmp
    except FileExistsError:  # 48 random bits: practically never
      continue


def write_temporary(path: str, write: Callable[[IO], None], binary: bool = False) -> str:
  """Writes a temporary file beside `path` with `write(file)`; returns its name.

  The caller renames it into place (or removes it). On failure nothing is left.
  """
  fd, tmp = _create_temporary(path)
  try:
    mode = 'wb' if binary else 'w'
    with os.fdopen(fd, mode, **({} if binary else {'encoding': 'utf-8', 'newline': ''})) as f:
      write(f)
  except BaseException:
    _remove_quietly(tmp)
    raise
  return tmp


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
  """Writes `path` with `write(file)` through a temporary file and a rename."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = write_temporary(path, write, binary)
  try:
    os.replace(tmp, path)
  except BaseException:
    _remove_quietly(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` through a temporary file and a rename: never half a file."""
  atomic_write(path, lambda f: f.write(text))


def _remove_quietly(path: str) -> None:
  try:
    os.unlink(path)
  except OSError:
    pass


def make_dirs(directory: str) -> list[str]:
  """Creates `directory` and missing parents; returns those created, innermost last."""
  created = []
  path = os.path.abspath(directory)
  while not os.path.lexists(path):
    created.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  created.reverse()
  for done, path in enumerate(created):
    try:
      os.mkdir(path)
    except BaseException:
      remove_empty_dirs(created[:done])
      raise
  return created


def remove_empty_dirs(created: list[str]) -> None:
  """Removes the folders of `created` (innermost last) that are empty; for cleanup."""
  for path in reversed(created):
    try:
      os.rmdir(path)
    except OSError:  # not empty, or already gone: leave it
      return


def check_output_dir(directory: str, flag: str = '--out') -> None:
  """DataError unless `directory` is a folder, or could be created, and is writable.

  Checked before long work, so that a typo costs seconds; the writes check again.
  """
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise DataError(f'{flag}={directory}: exists and is not a directory')
  existing = os.path.abspath(directory)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise DataError(f'{flag}={directory}: {existing} is not a directory')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise DataError(f'{flag}={directory}: cannot write in {existing} (Permission denied)')


class StagedFiles:
  """Files of one folder written together: all appear, or none of the new ones.

  Each `add` writes a temporary file at once; `commit` renames them all into
  place. Any failure (or leaving a `with` block early) removes the temporary
  files and the folders this object created.
  """

  def __init__(self, directory: str):
    self.directory = directory
    self._created = make_dirs(directory)
    self._staged: list[tuple[str, str]] = []

  def add(self, name: str, write: Callable[[IO], None], binary: bool = False) -> None:
    path = os.path.join(self.directory, name)
    self._staged.append((write_temporary(path, write, binary), path))

  def add_text(self, name: str, text: str) -> None:
    self.add(name, lambda f: f.write(text))

  def commit(self) -> None:
    """Renames every staged file into place; on failure removes the ones it created."""
    interrupts.check()  # a SIGTERM / Ctrl-C during the work: nothing is written
    for _, path in self._staged:
      if os.path.isdir(path):  # the one failure a rename cannot undo halfway
        raise IsADirectoryError(21, 'Is a directory', path)
    new = []
    try:
      for tmp, path in self._staged:
        existed = os.path.lexists(path)
        os.replace(tmp, path)
        if not existed:
          new.append(path)
    except BaseException:
      for path in new:  # files replaced in place cannot be restored; new ones can go
        _remove_quietly(path)
      raise
    self._staged = []
    self._created = []

  def abandon(self) -> None:
    for tmp, _ in self._staged:
      _remove_quietly(tmp)  # a temporary file already renamed is not there: no harm
    self._staged = []
    remove_empty_dirs(self._created)
    self._created = []

  def __enter__(self) -> 'StagedFiles':
    return self

  def __exit__(self, *exc) -> None:
    self.abandon()  # after commit there is nothing left to abandon
