"""Pretrained NeuMF in one command: GMF, then MLP, then NeuMF initialised from both.

  python -m ncf_jax.pipeline --workdir=DIR [--config=configs/neumf_pretrained.py] \
      [--config.dataset=ml-1m --config.num_factors=16 --config.num_epochs=20 ...]

Stages and workdirs: `DIR/gmf` (configs/gmf.py), `DIR/mlp` (configs/mlp.py),
`DIR/neumf` (the `--config`, with gmf_workdir/mlp_workdir pointing at the two).

`--config` (default configs/neumf_pretrained.py) is the NeuMF stage's config,
and also the source of the fields the three stages share: every field except
the per-stage ones (model, optimizer, learning_rate, adam_*, and NeuMF's
gmf_workdir/mlp_workdir/alpha) is copied from it into the GMF and MLP configs.
So `--config.dataset`, `--config.data_dir`, `--config.num_factors`,
`--config.layers`, `--config.num_epochs`, `--config.seed`, `--config.batch_size`,
... apply to all three; `--config.optimizer`, `--config.learning_rate` and
`--config.alpha` to the fine-tuning only (pretraining keeps configs/gmf.py's and
configs/mlp.py's Adam). A base config without gmf_workdir/alpha (e.g.
configs/test.py) gets them added, with alpha 0.5, and fine-tunes with its own
optimizer (add `--config.optimizer=sgd --config.learning_rate=0.01` for
configs/neumf_pretrained.py's). Smoke run on synthetic data:

  python -m ncf_jax.pipeline --workdir=/tmp/pipe --config=configs/test.py

Resumable: a stage whose metrics.jsonl has its last epoch, and whose latest
checkpoint is that epoch, is skipped; a half-done stage resumes from its
latest checkpoint (train_and_evaluate does that). A finished NeuMF stage is
not redone when an earlier stage is extended (e.g. more epochs): use a new DIR.
"""

if __name__ == '__main__':  # before the imports below (seconds): a signal meanwhile is kept
  from ncf_jax import interrupts  # pylint: disable=g-import-not-at-top
  interrupts.install()

import os  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags
import ml_collections
from ml_collections import config_dict
from ml_collections import config_flags

from ncf_jax import cli
from ncf_jax import config_checks
from ncf_jax import provenance
from ncf_jax import run_dir
from ncf_jax import run_settings
from ncf_jax import train
from ncf_jax import workdir_flags
from ncf_jax.configs import gmf as gmf_config
from ncf_jax.configs import mlp as mlp_config

DEFAULT_CONFIG = 'configs/neumf_pretrained.py'

# Fields each stage takes from its own config file rather than from `--config`.
STAGE_FIELDS = ('model', 'optimizer', 'learning_rate', 'adam_b1', 'adam_b2', 'adam_eps',
                'gmf_workdir', 'mlp_workdir', 'alpha')

FLAGS = flags.FLAGS


def _copy_shared(source: ml_collections.ConfigDict,
                 target: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`target` with every non-stage field of `source` copied over."""
  target = ml_collections.ConfigDict(target.to_dict())
  with target.unlocked():
    for key, value in source.items():
      if key not in STAGE_FIELDS:
        target[key] = (ml_collections.ConfigDict(value.to_dict())
                       if isinstance(value, ml_collections.ConfigDict) else value)
  return target


def stage_configs(config: ml_collections.ConfigDict,
                  workdir: str) -> list[tuple[str, ml_collections.ConfigDict, str]]:
  """[(name, config, workdir)] for the GMF, MLP and NeuMF stages."""
  workdir = os.path.abspath(workdir)
  dirs = {name: os.path.join(workdir, name) for name in ('gmf', 'mlp', 'neumf')}
  neumf = ml_collections.ConfigDict(config.to_dict())
  with neumf.unlocked():
    if 'gmf_workdir' not in neumf:
      neumf.gmf_workdir = config_dict.placeholder(str)
      neumf.mlp_workdir = config_dict.placeholder(str)
    neumf.alpha = float(config.get('alpha', 0.5))
    neumf.model = 'neumf'
  neumf.gmf_workdir, neumf.mlp_workdir = dirs['gmf'], dirs['mlp']
  return [('gmf', _copy_shared(config, gmf_config.get_config()), dirs['gmf']),
          ('mlp', _copy_shared(config, mlp_config.get_config()), dirs['mlp']),
          ('neumf', neumf, dirs['neumf'])]


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[dict]]:
  """Runs (or resumes, or skips) the three stages; returns each trained stage's history."""
  histories = {}
  stages = stage_configs(config, workdir)
  for _, stage_config, _ in stages:  # all before any training: a bad value fails at once
    config_checks.validate(stage_config)
  for name, stage_config, stage_dir in stages:
    if run_dir.RunDir(stage_dir).is_finished(stage_config.num_epochs, stage_config.target_hr):
      settings = run_settings.read(stage_config)
      provenance.check_same_run(run_dir.RunDir(stage_dir), settings.computing_fields,
                                *provenance.data_identity(settings.data))  # not other data
      print(f'[{name}] finished earlier: {stage_dir}', flush=True)
      continue
    print(f'[{name}] {stage_dir}', flush=True)
    _, histories[name] = train.train_and_evaluate(stage_config, stage_dir)
  return histories


def main(argv: list[str]) -> None:
  del argv
  for _, stage_config, _ in stage_configs(FLAGS.config, '.'):  # before --restart moves anything
    config_checks.validate(stage_config)
  run_pipeline(FLAGS.config, workdir_flags.resolve_workdir(prefix='pipeline-'))


def define_flags() -> None:
  """The command line's flags; defined only when run, so importing this module (tests,
  notebooks, next to `ncf_jax.main` or `ncf_jax.recommend`) defines no flags."""
  config_flags.DEFINE_config_file(cli.CONFIG_FLAG, cli.shipped_config(DEFAULT_CONFIG),
                                  'NeuMF (fine-tuning) config; its shared fields apply to all '
                                  f'stages. Default: {DEFAULT_CONFIG}.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Pipeline folder: gmf/, mlp/ and neumf/ go under it. '
                      'Default: workdirs/pipeline-<config stem>[-<digest of overrides>] here.')
  flags.DEFINE_bool('restart', False, 'Move an existing pipeline folder aside '
                    '(<workdir>.old-<time>) and start afresh.')


if __name__ == '__main__':
  cli.run(main, define_flags, interrupted_note=cli.RESUMES_NOTE)
