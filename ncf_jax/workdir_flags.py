"""The workdir of a command that trains: --workdir, or the default folder of --config and its
overrides, and --restart. Shared by `main` and `pipeline`; above `run_dir` (which it asks for
the default name and to move a run aside), so `cli`, which every command imports (the data
tools too), stays free of JAX and Orbax."""

from absl import flags
import jax
from jax.experimental import multihost_utils

from ncf_jax import cli
from ncf_jax import run_dir


def resolve_workdir(prefix: str = '') -> str:
  """--workdir, or the default folder of --config and its overrides (said on stdout); with
  --restart an existing run there is moved aside first. For commands that train."""
  primary = jax.process_index() == 0  # of a multi-process run: the one that writes and prints
  workdir = flags.FLAGS.workdir
  if workdir is None:
    workdir = run_dir.default_workdir(flags.FLAGS[cli.CONFIG_FLAG].config_filename,
                                      flags.FLAGS[cli.CONFIG_FLAG].value, prefix)
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
