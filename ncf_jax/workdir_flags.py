"""The workdir of a command that trains: --workdir, or the default folder of --config and its
overrides (`default_workdir`), and --restart. Shared by `main`, `pipeline` and `recommend`;
above `run_dir` (which it asks to move a run aside), so `cli`, which every command imports
(the data tools too), stays free of JAX and Orbax."""

import hashlib
import json
import os

from absl import flags
import jax
from jax.experimental import multihost_utils
import ml_collections

from ncf_jax import cli
from ncf_jax import config_fields
from ncf_jax import run_dir
from ncf_jax import run_settings


def default_workdir(config_file: str, config: ml_collections.ConfigDict, prefix: str = '',
                    cwd: str | None = None) -> str:
  """`workdirs/<prefix><config file's stem>[-<digest>]` under `cwd` (the current directory).

  The digest (8 hex digits) is of the computing fields (`config_fields.computing_fields`)
  whose values differ from the config file's own, so runs that compute different things
  never share a folder, while `num_epochs` and the other non-computing fields may change
  and continue a run.
  """
  path = config_file.split(':')[0]
  stem = os.path.splitext(os.path.basename(path))[0]
  ours, theirs = (config_fields.computing_fields(run_settings.config_json(c))
                  for c in (config, run_dir.load_config_file(path)))
  flat = config_fields.flat_fields(ours)
  differences = {k: flat.get(k) for k in config_fields.differing_fields(ours, theirs)}
  name = prefix + stem
  if differences:
    text = json.dumps(differences, sort_keys=True)
    name += '-' + hashlib.sha256(text.encode()).hexdigest()[:8]
  return os.path.abspath(os.path.join(cwd or os.getcwd(), run_dir.WORKDIRS, name))


def resolve_workdir(prefix: str = '') -> str:
  """--workdir, or the default folder of --config and its overrides (said on stdout); with
  --restart an existing run there is moved aside first. For commands that train."""
  primary = jax.process_index() == 0  # of a multi-process run: the one that writes and prints
  workdir = flags.FLAGS.workdir
  if workdir is None:
    workdir = default_workdir(flags.FLAGS[cli.CONFIG_FLAG].config_filename,
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
