"""Errors that are the user's to fix: command-line entry points print them as one line."""


class NcfError(Exception):
  """Base class: bad input, configuration or checkpoint; the message says which and where."""


class DataError(NcfError):
  """A data file is missing, malformed or inconsistent (the message names file and line)."""


class ConfigError(NcfError):
  """A configuration field has a value that cannot work (the message names the field)."""


class CheckpointError(NcfError):
  """A checkpoint is missing, partial or does not fit the model (the message names the path)."""


class NonFiniteError(NcfError):
  """Training or a model produced NaN or infinite values (the message says where)."""


class WorkdirError(NcfError):
  """A workdir cannot be used: not a directory, not writable, in use by another run."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint cannot be read, or its contents differ from the digests saved with it."""


class CheckpointSaveError(NcfError):
  """A checkpoint could not be written (full disk, permissions): the message names the path
  and the epoch; that epoch is not recorded."""
