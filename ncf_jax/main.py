"""Command line: `python -m ncf_jax.main --config=configs/neumf.py --workdir=DIR [--config.x=y]`."""

from absl import app
from absl import flags
from ml_collections import config_flags

from ncf_jax import cli
from ncf_jax import train
from ncf_jax import xla_cpu

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Configuration file, e.g. configs/neumf.py.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics.jsonl and checkpoints.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  cli.run_reporting_errors(argv, lambda: train.train_and_evaluate(FLAGS.config, FLAGS.workdir))


if __name__ == '__main__':
  xla_cpu.use_fast_cpu_runtime()
  app.run(main, flags_parser=cli.parse_flags_or_exit)
