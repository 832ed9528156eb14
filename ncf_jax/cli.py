"""What the command-line entry points share: flag parsing that fails in one line."""

import re
import sys

from absl import flags


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
