"""What every command-line entry point shares: flags parsed with one-line errors, logging set
once, shipped configs found from any directory, and one way of reporting errors.

  if __name__ == '__main__':
    cli.run(main, define_flags)

A user's error (`NcfError`), an OSError, a usage or flag mistake, Ctrl-C or SIGTERM ends the
command with one line on stderr and a non-zero exit code (1, 2 for usage, 130 / 143), never a
traceback. Signals are recorded and acted on at safe points (`interrupts.py`).
"""

import os
import re
import signal
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging

from ncf_jax import help_text
from ncf_jax import interrupts
from ncf_jax.data import files
from ncf_jax.errors import ConfigError, NcfError

CONFIG_FLAG = 'config'
USAGE_EXIT = 2
SEE_HELP = 'see --help'
# What a training command's interrupt line adds (readers and tools add nothing).
RESUMES_NOTE = 'the same command resumes after the last saved epoch'

Interrupted = interrupts.Interrupted  # the name callers and tests know


def config_key_error(error: Exception) -> str:
  """ml_collections' error for an unknown key as one line, with its suggestion."""
  text = str(error).replace('\\n', ' ').replace("\\'", "'")
  name = re.search(r"'([^' ]+)'", text)
  hint = re.search(r'Did you mean "[^"]+"', text)
  return (f"no such config field '{name.group(1) if name else text}'"
          + (f'. {hint.group(0)}?' if hint else ''))


def shipped_config(path: str) -> str:
  """`path`, or the config shipped with ncf_jax when `path` names `configs/<file>.py` and the
  current directory has no such file (so the README's commands work from anywhere)."""
  path, colon, argument = path.partition(':')  # ml_collections' `file.py:argument`
  if os.path.exists(path):
    return path + colon + argument
  head, name = os.path.split(os.path.normpath(path))
  if os.path.basename(head) != 'configs' or not name.endswith('.py'):
    return path + colon + argument
  from ncf_jax import configs  # pylint: disable=g-import-not-at-top
  shipped = os.path.join(os.path.dirname(configs.__file__), name)
  return (shipped if os.path.isfile(shipped) else path) + colon + argument


def _check_config_file(value: str) -> None:
  """ConfigError unless `value` (a path, or `path:argument` as ml_collections allows) names an
  existing Python file: ml_collections would defer the failure into a traceback."""
  path = value.split(':', 1)[0]
  if not os.path.exists(path):
    raise ConfigError(f'--{CONFIG_FLAG}={value}: no such file')
  if not os.path.isfile(path):
    raise ConfigError(f'--{CONFIG_FLAG}={value}: not a file')


def _resolve_config_arg(argv: list[str]) -> list[str]:
  """argv with the config file (`--config=F` or `--config F`) resolved to the shipped one where
  the current directory has none, and checked to exist."""
  out = []
  names = (f'--{CONFIG_FLAG}', f'-{CONFIG_FLAG}')
  for i, arg in enumerate(argv):
    if i > 1 and argv[i - 1] in names:  # the space form: `--config configs/test.py`
      arg = shipped_config(arg)
      _check_config_file(arg)
    for prefix in (f'{name}=' for name in names):
      if arg.startswith(prefix):
        arg = prefix + shipped_config(arg[len(prefix):])
        _check_config_file(arg[len(prefix):])
    out.append(arg)
  return out


def _config_arg(argv: list[str]) -> str:
  """The value of --config in argv (the last one given), or ''."""
  value = ''
  for i, arg in enumerate(argv):
    if i > 1 and argv[i - 1] in (f'--{CONFIG_FLAG}', f'-{CONFIG_FLAG}'):
      value = arg
    elif arg.startswith((f'--{CONFIG_FLAG}=', f'-{CONFIG_FLAG}=')):
      value = arg.split('=', 1)[1]
  return value


def _config_load_error(error: BaseException, argv: list[str]) -> str | None:
  """One line for an error ml_collections raised while loading the config file, or None."""
  value = f'--{CONFIG_FLAG}={_config_arg(argv)}'
  if isinstance(error, SyntaxError):
    return f'{value}: line {error.lineno}: {error.msg}'
  text = str(error)
  if isinstance(error, AttributeError) and "has no attribute 'get_config'" in text:
    return f'{value}: the file defines no get_config()'
  if 'Error whilst parsing config file' in text:  # get_config raised: its last line says why
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f'{value}: get_config failed: {lines[-1]}'
  return None


def _check_config_value() -> None:
  if CONFIG_FLAG not in flags.FLAGS or flags.FLAGS[CONFIG_FLAG].value is None:
    return
  import ml_collections  # pylint: disable=g-import-not-at-top
  value = flags.FLAGS[CONFIG_FLAG].value
  if not isinstance(value, ml_collections.ConfigDict):
    raise ConfigError(f'--{CONFIG_FLAG}={flags.FLAGS[CONFIG_FLAG].config_filename}: '
                      f'get_config() returned a {type(value).__name__}, not an '
                      'ml_collections.ConfigDict')


def usage_line(message: str) -> str:
  """The one line of a command-line mistake."""
  return f'error: {" ".join(message.split())}; {SEE_HELP}'


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing; a bad flag, a config file that cannot load or a misspelt config key is an
  app.UsageError of one line."""
  try:
    parsed = flags.FLAGS(_resolve_config_arg(argv))
    _check_config_value()
    return parsed
  except NcfError as e:
    message = str(e)
  except (flags.Error, SyntaxError, AttributeError, KeyError, TypeError, ValueError) as e:
    message = _config_load_error(e, argv) if CONFIG_FLAG in flags.FLAGS else None
    if message is None and CONFIG_FLAG in flags.FLAGS:
      try:  # overrides of a config that is no ConfigDict fail first; say what is wrong
        _check_config_value()
      except NcfError as not_a_config:
        message = str(not_a_config)
      except Exception:  # pylint: disable=broad-except  (not loaded: the error below says why)
        pass
    if message is None:
      if isinstance(e, flags.Error):
        message = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        required = re.search(r'Flag --(\w+) must have a value other than None', message)
        if required:
          message = f'--{required.group(1)} is required'
        unknown = re.match(rf"Unknown command line flag '{CONFIG_FLAG}\.([^']+)'", message)
        if unknown:  # absl's name for a key the config does not have
          message = f"no such config field '{unknown.group(1)}'"
      elif isinstance(e, (AttributeError, KeyError)):  # ml_collections: an unknown key
        message = config_key_error(e)
      else:
        message = f'{type(e).__name__}: {e}'
  raise app.UsageError(message)


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """`parse_flags`, exiting with its one line (absl's flags_parser)."""
  try:
    return parse_flags(argv)
  except app.UsageError as e:
    print(usage_line(str(e)), file=sys.stderr)
    sys.exit(USAGE_EXIT)


def _message(error: BaseException) -> str:
  """An error the user can act on, on one line (an OSError with the path it concerns)."""
  if isinstance(error, MemoryError):
    return 'out of memory' + (f' ({files.one_line(error)})' if str(error) else '')
  where = f'{error.filename}: ' if isinstance(error, OSError) and error.filename else ''
  return where + files.one_line(error)


def interrupted_line(signum: int, note: str = '', finished: bool = False) -> str:
  name = 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name
  if finished:
    return f'error: interrupted ({name}) as the command finished (its work is complete)'
  return f'error: interrupted ({name})' + (f'; {note}' if note else '')


def outcome(action: Callable[[], object], interrupted_note: str | Callable[[], str] = ''
            ) -> tuple[int, str | None]:
  """Runs `action`: (0, None), or (exit code, the one line) of a user-facing failure.
  `interrupted_note`: what an interrupt's line adds (a callable: decided when it happens)."""
  try:
    interrupts.check()  # a signal during the imports or the flag parsing
    action()
  except (NcfError, OSError, MemoryError) as e:
    return 1, f'error: {_message(e)}'
  except app.UsageError as e:
    return USAGE_EXIT, usage_line(str(e))
  except ValueError as e:
    if type(e).__name__ != 'IndivisibleError':  # a bug: its traceback is wanted
      raise
    # A layout the device count cannot split (jax's sharding check): the config's to change.
    return 1, f'error: {str(e).splitlines()[0]}; try another --config.num_devices'
  except KeyboardInterrupt as e:
    signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
    note = interrupted_note() if callable(interrupted_note) else interrupted_note
    return 128 + signum, interrupted_line(signum, note)
  if interrupts.received() is not None:  # arrived after the last safe point: still obeyed
    return 128 + interrupts.received(), interrupted_line(interrupts.received(), finished=True)
  return 0, None


def _exit_with(line: str, code: int) -> None:
  """Prints `line` and ends the process without interpreter shutdown. The run's files are
  closed by then (checkpoint saves waited for), but a computation, a prefetch or the reads
  of a damaged checkpoint that the failure cut off may still be running in native threads:
  shutdown would tear them down under them (seen: a segfault) or print their errors."""
  print(line, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def resolve_workdir(prefix: str = '') -> str:
  """--workdir, or the default folder of --config and its overrides (said on stdout); with
  --restart an existing run there is moved aside first. For commands that train."""
  # Imported here: keeps `python -m ncf_jax.data` free of JAX and Orbax imports.
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from ncf_jax import run_dir  # pylint: disable=g-import-not-at-top
  primary = jax.process_index() == 0  # of a multi-process run: the one that writes and prints
  workdir = flags.FLAGS.workdir
  if workdir is None:
    workdir = run_dir.default_workdir(flags.FLAGS[CONFIG_FLAG].config_filename,
                                      flags.FLAGS[CONFIG_FLAG].value, prefix)
    if primary:
      print(f'workdir: {workdir} (the default for this config; --workdir=DIR to choose)',
            flush=True)
  if flags.FLAGS.restart:
    moved = run_dir.RunDir(workdir).move_aside() if primary else None
    if moved:
      print(f'restart: the earlier run was moved to {moved}', flush=True)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('ncf_jax restart')  # the others wait for the move
  return workdir


def run(main: Callable[[list[str]], object], define_flags: Callable[[], None] | None = None,
        max_args: int = 0, interrupted_note: str | Callable[[], str] = '') -> None:
  """Runs a command: records SIGTERM and Ctrl-C from now on, defines its flags (only now:
  importing a module defines none), parses them, sets logging, reports errors in one line.

  `max_args`: how many positional arguments the command takes. `interrupted_note`: what the
  interrupt line adds (training commands: `RESUMES_NOTE`).
  """
  interrupts.install()
  if define_flags is not None:
    define_flags()
  help_text.exit_if_help_requested(sys.argv, sys.modules[main.__module__].__doc__)

  def wrapped(argv: list[str]) -> None:
    code, line = outcome(lambda: _call_main(main, argv, max_args), interrupted_note)
    if line is not None:
      _exit_with(line, code)
    sys.exit(code)

  app.run(wrapped, flags_parser=parse_flags_or_exit)


def _call_main(main: Callable[[list[str]], object], argv: list[str], max_args: int) -> None:
  if len(argv) - 1 > max_args:
    raise app.UsageError(f'unexpected arguments {" ".join(argv[1 + max_args:])} '
                         '(write --flag=value, with =)')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save and restore at INFO
  main(argv)


def run_in_process(main: Callable[[list[str]], object], argv: list[str], max_args: int = 0,
                   interrupted_note: str | Callable[[], str] = '') -> tuple[int, str | None]:
  """What `run` does with `argv` (flags already defined), without ending the process:
  (exit code, its one line or None). For tests and scripts."""
  return outcome(lambda: _call_main(main, parse_flags(argv), max_args), interrupted_note)
