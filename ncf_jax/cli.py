"""What the command-line entry points share: flag parsing that fails in one line."""

import re
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from ncf_jax.errors import NcfError


def config_key_error(error: Exception) -> str:
  """ml_collections' error for an unknown key as one line, with its suggestion."""
  text = str(error).replace('\\n', ' ').replace("\\'", "'")
  name = re.search(r"'([^' ]+)'", text)
  hint = re.search(r'Did you mean "[^"]+"', text)
  return (f"no such config field '{name.group(1) if name else text}'"
          + (f'. {hint.group(0)}?' if hint else ''))


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """absl's parsing, but a bad flag or a misspelt config key exits with one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError) as e:  # ml_collections: a key the config does not have
    message = config_key_error(e)
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def run_reporting_errors(argv: list[str], action: Callable[[], object]) -> None:
  """A command's main: no stray arguments, Orbax's INFO logs off, user errors in one line."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]} (write --config.field=value, with =)')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  try:
    action()
  except NcfError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
