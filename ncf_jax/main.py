"""Command line: `python -m ncf_jax.main --config=configs/neumf.py --workdir=DIR [--config.x=y]`."""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ncf_jax import cli
from ncf_jax import train
from ncf_jax import xla_cpu
from ncf_jax.errors import NcfError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Configuration file, e.g. configs/neumf.py.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics.jsonl and checkpoints.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]} (write --config.field=value, with =)')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except NcfError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  xla_cpu.use_fast_cpu_runtime()
  app.run(main, flags_parser=cli.parse_flags_or_exit)
