"""What every command-line entry point shares: flags parsed with one-line errors, logging set
once, shipped configs found from any directory, and one way of reporting errors.

  if __name__ == '__main__':
    cli.run(main, define_flags)

A user's error (`NcfError`), an OSError, Ctrl-C or SIGTERM ends the command with
one line on stderr and a non-zero exit code, never a traceback.
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
from ncf_jax.data import files
from ncf_jax.errors import NcfError

CONFIG_FLAG = 'config'


class Interrupted(KeyboardInterrupt):
  """SIGTERM (a preempted or cancelled job), raised in the main thread like Ctrl-C."""


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
  if os.path.exists(path):
    return path
  head, name = os.path.split(os.path.normpath(path))
  if os.path.basename(head) != 'configs' or not name.endswith('.py'):
    return path
  from ncf_jax import configs  # pylint: disable=g-import-not-at-top
  shipped = os.path.join(os.path.dirname(configs.__file__), name)
  return shipped if os.path.isfile(shipped) else path


def _resolve_config_arg(argv: list[str]) -> list[str]:
  out = []
  for arg in argv:
    for prefix in (f'--{CONFIG_FLAG}=', f'-{CONFIG_FLAG}='):
      if arg.startswith(prefix):
        arg = prefix + shipped_config(arg[len(prefix):])
    out.append(arg)
  return out


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """absl's parsing, but a bad flag or a misspelt config key exits with one line."""
  try:
    return flags.FLAGS(_resolve_config_arg(argv))
  except flags.Error as e:
    message = str(e)
  except (AttributeError, KeyError) as e:  # ml_collections: a key the config does not have
    message = config_key_error(e)
  except NcfError as e:
    message = str(e)
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _raise_interrupted(signum, frame):
  del frame
  raise Interrupted(signal.Signals(signum).name)


def _message(error: BaseException) -> str:
  """An error the user can act on, on one line (an OSError with the path it concerns)."""
  where = f'{error.filename}: ' if isinstance(error, OSError) and error.filename else ''
  return where + files.one_line(error)


def _report(action: Callable[[], object]) -> int:
  """Runs `action`; returns 0, or exits at once after one line for a user-facing failure."""
  try:
    action()
  except (NcfError, OSError) as e:
    _exit_with(f'error: {_message(e)}', 1)
  except KeyboardInterrupt as e:
    name = str(e) if isinstance(e, Interrupted) else 'Ctrl-C'
    _exit_with(f'error: interrupted ({name}); the same command resumes after the last saved '
               'epoch', 128 + (signal.SIGTERM if isinstance(e, Interrupted) else signal.SIGINT))
  return 0


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


def define_distributed_flags() -> None:
  """Flags of a run over several processes (hosts): jax.distributed.initialize's arguments."""
  flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for a run of '
                      'several processes (jax.distributed).')
  flags.DEFINE_integer('num_processes', None, 'Processes in the run (with --coordinator_address).')
  flags.DEFINE_integer('process_id', None, 'This process (0 .. num_processes-1).')
  flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() with no arguments: '
                    'where it finds its settings itself (Cloud TPU, Slurm, Open MPI).')


def initialize_distributed() -> None:
  """Joins a multi-process run if the flags ask for one (before any other JAX call)."""
  values = flags.FLAGS
  if values.coordinator_address is None and not values.distributed:
    return
  import jax  # pylint: disable=g-import-not-at-top
  # CPU devices of several processes talk through gloo; accelerators ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if values.coordinator_address is None:
    jax.distributed.initialize()
    return
  if values.num_processes is None or values.process_id is None:
    raise NcfError('--coordinator_address needs --num_processes and --process_id')
  jax.distributed.initialize(values.coordinator_address, num_processes=values.num_processes,
                             process_id=values.process_id)


def run(main: Callable[[list[str]], object], define_flags: Callable[[], None] | None = None,
        max_args: int = 0) -> None:
  """Runs a command: defines its flags (only now: importing a module defines none),
  parses them, sets logging, turns SIGTERM into an interrupt, reports errors in one line.

  `max_args`: how many positional arguments the command takes.
  """
  if define_flags is not None:
    define_flags()
  help_text.exit_if_help_requested(sys.argv, sys.modules[main.__module__].__doc__)

  def wrapped(argv: list[str]) -> None:
    if len(argv) - 1 > max_args:
      raise app.UsageError(f'unexpected arguments {argv[1 + max_args:]} '
                           '(write --flag=value, with =)')
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save and restore at INFO
    signal.signal(signal.SIGTERM, _raise_interrupted)
    sys.exit(_report(lambda: main(argv)))

  app.run(wrapped, flags_parser=parse_flags_or_exit)
