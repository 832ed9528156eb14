"""Reproduce the NCF paper's ML-1M tables and figures: one command each, resumable.

  python -m experiments.reproduce --experiment=table2 --data_dir=DIR/ml-1m [--validation]
  python -m experiments.reproduce --experiment=table3 --data_dir=DIR/ml-1m
  python -m experiments.reproduce --experiment=negatives --data_dir=DIR/ml-1m
  python -m experiments.reproduce --experiment=factors --data_dir=DIR/ml-1m

Each run gets its own workdir under `--runs_dir` (default `runs/`); a run whose
metrics.jsonl already has its last epoch is skipped, a half-done one resumes from
its checkpoint, so the same command can be repeated until everything is done.
Results go to `experiments/results/<experiment>.md` and, for table2, to
`experiments/results/summary.json`. `--validation` carves a validation holdout and
selects epochs on it (the honest protocol); without it the best epoch is picked on
test, as the original code does, and the tables say which. `--dry_run` lists the
runs and their commands.
"""

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections

from experiments import report
from ncf_jax import pipeline
from ncf_jax import train
from ncf_jax import xla_cpu

# HR@10 / NDCG@10 on ML-1M from He et al. (2017), Table 2 (NeuMF) and Table 3 (MLP HR@10).
PAPER_TABLE2 = {(8, False): (.688, .410), (8, True): (.684, .403),
                (16, False): (.696, .420), (16, True): (.707, .426),
                (32, False): (.701, .425), (32, True): (.726, .445),
                (64, False): (.705, .426), (64, True): (.730, .447)}
PAPER_TABLE3_F8 = {0: .452, 1: .628, 2: .655, 3: .671, 4: .678}

flags.DEFINE_enum('experiment', 'table2', ['table2', 'table3', 'negatives', 'factors'],
                  'What to reproduce.')
flags.DEFINE_string('data_dir', None, 'The NCF-format ML-1M directory.')
flags.DEFINE_string('runs_dir', 'runs', 'Where the runs\' workdirs go.')
flags.DEFINE_string('results_dir', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                'results'), 'Where tables and summary.json go.')
flags.DEFINE_string('dataset', 'ml-1m', 'Dataset name (synthetic for a smoke run).')
flags.DEFINE_list('factors', ['8', '16', '32', '64'], 'Predictive factors to run.')
flags.DEFINE_bool('validation', False, 'Select epochs on a validation holdout.')
flags.DEFINE_integer('num_epochs', 20, 'Epochs per run (the paper: 20).')
flags.DEFINE_integer('seed', 0, 'Seed of every run.')
flags.DEFINE_bool('dry_run', False, 'List the runs and their commands, train nothing.')
FLAGS = flags.FLAGS


@dataclasses.dataclass
class Run:
  """One training run: a config file, overrides, a workdir; `pipeline` for pretraining."""
  name: str
  config_file: str
  overrides: dict
  workdir: str
  pipeline: bool = False
  labels: dict = dataclasses.field(default_factory=dict)

  def config(self) -> ml_collections.ConfigDict:
    module = __import__(f'configs.{self.config_file}', fromlist=['get_config'])
    config = module.get_config()
    for key, value in self.overrides.items():
      config[key] = value
    return config

  def command(self) -> str:
    entry = 'ncf_jax.pipeline' if self.pipeline else 'ncf_jax.main'
    shown = dict(self.overrides)
    if 'data_dir' in shown:
      shown['data_dir'] = FLAGS.data_dir  # as the user typed it, not this machine's path
    args = ' '.join(f'--config.{k}={_flag_value(v)}' for k, v in shown.items())
    workdir = os.path.relpath(self.workdir)
    return (f'python -m {entry} --config=configs/{self.config_file}.py '
            f'--workdir={workdir if not workdir.startswith("..") else self.workdir} {args}')

  def result_dir(self) -> str:
    return os.path.join(self.workdir, 'neumf') if self.pipeline else self.workdir


def _flag_value(value) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, tuple):
    return '"(' + ','.join(str(v) for v in value) + (',)"' if len(value) == 1 else ')"')
  return str(value)


def mlp_layers(num_hidden: int, num_factors: int) -> tuple[int, ...]:
  """The tower halving down to `num_factors`: (f·2^L, ..., 2f, f) for L hidden layers."""
  return tuple(num_factors * 2**(num_hidden - j) for j in range(num_hidden + 1))


def plan(experiment: str) -> list[Run]:
  """The runs an experiment needs."""
  common = dict(dataset=FLAGS.dataset, num_epochs=FLAGS.num_epochs, seed=FLAGS.seed,
                validation=FLAGS.validation, log_every_seconds=0.0)
  if FLAGS.data_dir:
    common['data_dir'] = os.path.abspath(FLAGS.data_dir)
  root = os.path.join(os.path.abspath(FLAGS.runs_dir), experiment)
  factors = [int(f) for f in FLAGS.factors]
  runs = []
  if experiment == 'table2':
    for f in factors:
      runs.append(Run(f'neumf-{f}', 'neumf', dict(common, num_factors=f),
                      os.path.join(root, f'neumf-{f}'), labels=dict(factors=f, pretrained=False)))
      runs.append(Run(f'neumf-pre-{f}', 'neumf_pretrained', dict(common, num_factors=f),
                      os.path.join(root, f'pre-{f}'), pipeline=True,
                      labels=dict(factors=f, pretrained=True)))
  elif experiment == 'table3':
    for f in factors:
      for hidden in range(5):
        runs.append(Run(f'mlp{hidden}-{f}', 'mlp',
                        dict(common, num_factors=f, layers=mlp_layers(hidden, f)),
                        os.path.join(root, f'mlp{hidden}-{f}'),
                        labels=dict(factors=f, hidden_layers=hidden)))
  elif experiment == 'negatives':
    for n in range(1, 11):
      runs.append(Run(f'neumf-neg{n}', 'neumf', dict(common, num_negatives=n),
                      os.path.join(root, f'neg{n}'), labels=dict(num_negatives=n)))
  elif experiment == 'factors':
    for f in factors:
      for model in ('gmf', 'mlp', 'neumf'):
        runs.append(Run(f'{model}-{f}', model, dict(common, num_factors=f),
                        os.path.join(root, f'{model}-{f}'), labels=dict(model=model, factors=f)))
      # Rendle et al.'s dot-product MF: biases, L2, more negatives, row-wise Adam.
      runs.append(Run(f'mf-{f}', 'neumf', dict(common, model='mf', num_factors=f,
                                               num_negatives=8, optimizer='lazy_adam',
                                               learning_rate=0.002, l2_embeddings=1e-5),
                      os.path.join(root, f'mf-{f}'), labels=dict(model='mf', factors=f)))
  return runs


def execute(run: Run) -> None:
  config = run.config()
  if run.pipeline:
    pipeline.run_pipeline(config, run.workdir)
  elif pipeline.is_finished(config, run.workdir):
    print(f'[{run.name}] finished earlier', flush=True)
  else:
    print(f'[{run.name}] {run.command()}', flush=True)
    train.train_and_evaluate(config, run.workdir)


def write_results(experiment: str, runs: list[Run]) -> None:
  rows = []
  for run in runs:
    if not os.path.isfile(os.path.join(run.result_dir(), 'metrics.jsonl')):
      continue
    row = dict(report.summarize_run(run.result_dir()), **run.labels, name=run.name,
               command=run.command())
    if experiment == 'table2':
      row['paper_hr'], row['paper_ndcg'] = PAPER_TABLE2[(row['factors'], row['pretrained'])]
    rows.append(row)
  out_dir = FLAGS.results_dir
  os.makedirs(out_dir, exist_ok=True)
  lines = [f'# {experiment} (ML-1M)\n', 'Made by `python -m experiments.reproduce '
           f'--experiment={experiment}' + (' --validation' if FLAGS.validation else '') + '`.\n',
           '| run | ' + ' | '.join(run_labels := list(runs[0].labels)) +
           ' | best epoch (selected on) | HR@10 | NDCG@10 | paper |',
           '|---|' + '---|' * (len(run_labels) + 4)]
  for row in rows:
    paper = (f"{row['paper_hr']:.3f} / {row['paper_ndcg']:.3f}" if 'paper_hr' in row else
             (f"{PAPER_TABLE3_F8[row['hidden_layers']]:.3f}" if experiment == 'table3'
              and row['factors'] == 8 else ''))
    lines.append(f"| {row['name']} | "
                 + ' | '.join(str(row[k]) for k in run_labels)
                 + f" | {row['best_epoch']} ({row['selection']}) | {row['hr']:.4f} | "
                 f"{row['ndcg']:.4f} | {paper} |")
  with open(os.path.join(out_dir, f'{experiment}.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  if experiment == 'table2':
    path = os.path.join(out_dir, 'summary.json')
    summary = json.load(open(path, encoding='utf-8')) if os.path.exists(path) else {}
    summary['table2'] = [{k: row[k] for k in ('factors', 'pretrained', 'hr', 'ndcg', 'paper_hr',
                                              'paper_ndcg', 'command', 'selection')}
                         for row in rows]
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      json.dump(summary, f, indent=2)
    os.replace(path + '.tmp', path)
  print('\n'.join(lines))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  runs = plan(FLAGS.experiment)
  if FLAGS.dry_run:
    for run in runs:
      print(run.command())
    return
  for run in runs:
    execute(run)
  write_results(FLAGS.experiment, runs)


if __name__ == '__main__':
  xla_cpu.use_fast_cpu_runtime()
  app.run(main)
