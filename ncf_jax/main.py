"""Command line: `python -m ncf_jax.main --config=configs/neumf.py [--workdir=DIR] [--config.x=y]`.

Without --workdir the run goes to `workdirs/<config stem>[-<digest of the overrides>]` under
the current directory; the same command again resumes it.
"""

if __name__ == '__main__':  # before the imports below (seconds): a signal meanwhile is kept
  from ncf_jax import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install()

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from ncf_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from ncf_jax import config_checks  # pylint: disable=g-import-not-at-top,wrong-import-position
from ncf_jax import launch  # pylint: disable=g-import-not-at-top,wrong-import-position
from ncf_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(cli.CONFIG_FLAG, None,
                                  'Configuration file, e.g. configs/neumf.py (the shipped one '
                                  'when the current directory has no configs/).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run folder (config.json, metrics.jsonl, checkpoints). '
                      'Default: workdirs/<config stem>[-<digest of overrides>] here.')
  flags.DEFINE_bool('restart', False, 'Move an existing run in the workdir aside '
                    '(<workdir>.old-<time>) and start afresh.')
  flags.mark_flags_as_required([cli.CONFIG_FLAG])
  launch.define_flags()


def main(argv: list[str]) -> None:
  del argv
  config_checks.validate(FLAGS.config)  # every value, before any folder or process group
  launch.initialize_from_flags()
  train.train_and_evaluate(FLAGS.config, cli.resolve_workdir())


if __name__ == '__main__':
  cli.run(main, define_flags, interrupted_note=cli.RESUMES_NOTE)
