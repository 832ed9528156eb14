"""Reproduce the NCF paper's ML-1M tables and figures: one command each, resumable.

  python -m experiments.reproduce --experiment=table2 --data_dir=DIR/ml-1m [--validation]
  python -m experiments.reproduce --experiment=table3 --data_dir=DIR/ml-1m
  python -m experiments.reproduce --experiment=negatives --data_dir=DIR/ml-1m
  python -m experiments.reproduce --experiment=factors --data_dir=DIR/ml-1m
  python -m experiments.reproduce --experiment=seeds --factors=8 --data_dir=DIR/ml-1m
  python -m experiments.reproduce --experiment=best --data_dir=DIR/ml-1m

Each run gets its own workdir under `--runs_dir` (default `runs/`); a run whose
metrics.jsonl already has its last epoch is skipped, a half-done one resumes from
its checkpoint, so the same command can be repeated until everything is done.
Runs that two experiments share live in one workdir and are trained once: the
GMF and MLP of Table 2's pretraining pipelines are the factors figure's GMF and
MLP and Table 3's 3-layer MLP; Table 2's NeuMF is the figure's NeuMF.

`seeds` trains NeuMF (paper settings) with a validation holdout once per `--seeds`
and reports test at the epoch chosen on validation, with mean ± std over seeds.
`best` trains the model this project ships as its best (configs/mf.py: MF at
192 factors, Rendle et al.'s recipe) with a validation holdout, one run per
`--seeds`, and writes `summary.json`'s `best`: the ensemble of those runs (mean
logits of each run's checkpoint chosen on its validation split; nothing looks
at test), and each single run's figures with their mean ± std.

Results go to `experiments/results/<experiment>.md` and `<experiment>.json`,
for table2 and best also to `summary.json`, and, with matplotlib installed, a plot
`<experiment>.png` (`python -m experiments.plots` redraws them). `--validation`
carves a validation holdout and selects epochs on it (the honest protocol);
without it the best epoch is picked on test, as the original code does, and the
tables say which, next to the last epoch's figures (a choice that never looks
at test). Full-ranking HR/NDCG of each best checkpoint are added
(`--full_ranking`). `--dry_run` lists the runs and their commands;
`--write_only` writes the results of the runs finished so far.

Settings: the paper's (configs/neumf.py etc.: batch 256, Adam 0.001, 4
negatives, 20 epochs) except where a CPU cannot afford them: 64 factors train at
batch 1024, and the negatives sweep (GMF, MLP and NeuMF at 1 to 10 negatives: 65
epoch-equivalents of work each) at batch 1024 with Adam 0.005, all values in the
paper's tuning grid; MF follows Rendle et al. (configs/mf.py). Only finished runs
enter the results.
"""

import dataclasses
import json
import os
import sys

from absl import flags
import ml_collections
import numpy as np

from experiments import report
from experiments import stream
from ncf_jax import cli
from ncf_jax import config_checks
from ncf_jax import ensemble
from ncf_jax import evaluation
from ncf_jax import pipeline
from ncf_jax import run_settings
from ncf_jax import train
from ncf_jax import run_dir
from ncf_jax.data import registry
from ncf_jax.data.files import atomic_write_text

# HR@10 / NDCG@10 on ML-1M from He et al. (2017), Table 2 (NeuMF) and Table 3 (MLP HR@10).
PAPER_TABLE2 = {(8, False): (.688, .410), (8, True): (.684, .403),
                (16, False): (.696, .420), (16, True): (.707, .426),
                (32, False): (.701, .425), (32, True): (.726, .445),
                (64, False): (.705, .426), (64, True): (.730, .447)}
PAPER_TABLE3_F8 = {0: .452, 1: .628, 2: .655, 3: .671, 4: .678}
# At 64 factors the paper's batch of 256 costs ~90 s per epoch and model on a 2-core CPU
# (3 models x 20 epochs for one Table 2 column); 1024 is in the paper's tuning grid
# ({128, 256, 512, 1024}) and cuts that by about four.
TABLE2_BATCH_SIZE = {64: dict(batch_size=1024)}

def define_flags() -> None:
  """The command's flags, defined when it runs (`cli.run`), not at import."""
  flags.DEFINE_enum('experiment', 'table2', ['table2', 'table3', 'negatives', 'factors', 'seeds',
                                              'best', 'baselines'],
                    'What to reproduce.')
  flags.DEFINE_string('data_dir', None, 'The NCF-format ML-1M directory.')
  flags.DEFINE_string('runs_dir', 'runs', 'Where the runs\' workdirs go.')
  flags.DEFINE_string('results_dir', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  'results'), 'Where tables and summary.json go.')
  flags.DEFINE_string('dataset', 'ml-1m', 'Dataset name (synthetic for a smoke run).')
  flags.DEFINE_list('factors', ['8', '16', '32', '64'], 'Predictive factors to run.')
  flags.DEFINE_list('mf_factors', ['8', '16', '32', '64', '128', '192'],
                    'Dot-product MF sizes in the factors figure.')
  flags.DEFINE_bool('validation', False, 'Select epochs on a validation holdout.')
  flags.DEFINE_integer('num_epochs', None, 'Epochs per run; unset: each config\'s own '
                       '(the paper\'s 20; MF 256).')
  flags.DEFINE_integer('seed', 0, 'Seed of every run.')
  flags.DEFINE_integer('synthetic_users', None, 'With --dataset=synthetic: its number of users '
                       '(smaller for a quicker smoke run).')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the `seeds` and `best` experiments '
                    '(best reports their ensemble).')
  flags.DEFINE_bool('full_ranking', True, 'Add full-ranking HR/NDCG of each best checkpoint.')
  flags.DEFINE_list('mf_workdirs', [], 'baselines: MF-192 runs (validation holdout) to add to '
                    'the ensembles, e.g. runs/best/mf-192-seed0,...')
  flags.DEFINE_enum('baselines_grid', 'full', ['full', 'smoke'], 'baselines: the grids '
                    '(smoke: two settings each, for a quick check).')
  flags.DEFINE_bool('dry_run', False, 'List the runs and their commands, train nothing.')
  flags.DEFINE_bool('write_only', False, 'Write the results of the finished runs, train nothing.')


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
    module = __import__(f'ncf_jax.configs.{self.config_file}', fromlist=['get_config'])
    config = module.get_config()
    for key, value in self.overrides.items():
      if key == 'synthetic_users':
        config.synthetic.num_users = value
      else:
        config[key] = value
    return config

  def command(self) -> str:
    entry = 'ncf_jax.pipeline' if self.pipeline else 'ncf_jax.main'
    shown = dict(self.overrides)
    if 'data_dir' in shown:
      shown['data_dir'] = FLAGS.data_dir  # as the user typed it, not this machine's path
    names = {'synthetic_users': 'synthetic.num_users'}
    args = ' '.join(f'--config.{names.get(k, k)}={_flag_value(v)}' for k, v in shown.items())
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
  common = dict(dataset=FLAGS.dataset, seed=FLAGS.seed, validation=FLAGS.validation,
                log_every_seconds=0.0)
  if FLAGS.num_epochs is not None:
    common['num_epochs'] = FLAGS.num_epochs
  if FLAGS.synthetic_users is not None:
    common['synthetic_users'] = FLAGS.synthetic_users
  if FLAGS.data_dir:
    common['data_dir'] = os.path.abspath(FLAGS.data_dir)
  runs_dir = os.path.abspath(FLAGS.runs_dir)
  if FLAGS.validation:  # other runs than the paper-protocol ones: keep them apart
    runs_dir = os.path.join(runs_dir, 'validation')
  root = os.path.join(runs_dir, experiment)
  table2 = os.path.join(runs_dir, 'table2')
  factors = [int(f) for f in FLAGS.factors]
  runs = []
  if experiment == 'table2':
    for f in factors:
      size = dict(num_factors=f, **TABLE2_BATCH_SIZE.get(f, {}))
      runs.append(Run(f'neumf-{f}', 'neumf', dict(common, **size),
                      os.path.join(root, f'neumf-{f}'), labels=dict(factors=f, pretrained=False)))
      runs.append(Run(f'neumf-pre-{f}', 'neumf_pretrained', dict(common, **size),
                      os.path.join(root, f'pre-{f}'), pipeline=True,
                      labels=dict(factors=f, pretrained=True)))
  elif experiment == 'table3':
    for f in factors:
      size = dict(num_factors=f, **TABLE2_BATCH_SIZE.get(f, {}))
      for hidden in range(5):
        if hidden == 3:  # the paper's tower: Table 2's MLP
          run = Run(f'mlp3-{f}', 'mlp', dict(common, **size),
                    os.path.join(table2, f'pre-{f}', 'mlp'))
        else:
          run = Run(f'mlp{hidden}-{f}', 'mlp',
                    dict(common, **size, layers=mlp_layers(hidden, f)),
                    os.path.join(root, f'mlp{hidden}-{f}'))
        run.labels = dict(factors=f, hidden_layers=hidden)
        runs.append(run)
  elif experiment == 'negatives':
    for model in ('neumf', 'gmf', 'mlp'):
      for n in range(1, 11):
        prefix = '' if model == 'neumf' else f'{model}-'  # NeuMF's runs came first
        runs.append(Run(f'{model}-neg{n}', model,
                        dict(common, num_negatives=n, batch_size=1024, learning_rate=0.005),
                        os.path.join(root, f'{prefix}neg{n}'),
                        labels=dict(model=model, num_negatives=n)))
  elif experiment == 'factors':
    for f in factors:
      size = dict(num_factors=f, **TABLE2_BATCH_SIZE.get(f, {}))
      runs += [Run(f'gmf-{f}', 'gmf', dict(common, **size),
                   os.path.join(table2, f'pre-{f}', 'gmf'), labels=dict(model='gmf', factors=f)),
               Run(f'mlp-{f}', 'mlp', dict(common, **size),
                   os.path.join(table2, f'pre-{f}', 'mlp'), labels=dict(model='mlp', factors=f)),
               Run(f'neumf-{f}', 'neumf', dict(common, **size),
                   os.path.join(table2, f'neumf-{f}'), labels=dict(model='neumf', factors=f))]
    for f in (int(f) for f in FLAGS.mf_factors):
      runs.append(Run(f'mf-{f}', 'mf', dict(common, num_factors=f), os.path.join(root, f'mf-{f}'),
                      labels=dict(model='mf', factors=f)))
  elif experiment == 'seeds':
    root = os.path.join(os.path.abspath(FLAGS.runs_dir), 'seeds')  # always on validation
    for f in factors:
      for seed in (int(s) for s in FLAGS.seeds):
        runs.append(Run(f'neumf-{f}-seed{seed}', 'neumf',
                        dict(common, num_factors=f, seed=seed, validation=True),
                        os.path.join(root, f'neumf-{f}-seed{seed}'),
                        labels=dict(factors=f, seed=seed)))
  elif experiment == 'best':
    root = os.path.join(os.path.abspath(FLAGS.runs_dir), 'best')  # always on validation
    for seed in (int(s) for s in FLAGS.seeds):
      runs.append(Run(f'mf-192-seed{seed}', 'mf', dict(common, seed=seed, validation=True),
                      os.path.join(root, f'mf-192-seed{seed}'),
                      labels=dict(model='mf', factors=192, seed=seed)))
  return runs


def check_before_training(runs: list[Run]) -> None:
  """Every run's config, and the data, before any folder is made: a bad --data_dir or value is
  one line that leaves no runs/<experiment>/ behind."""
  for run in runs:
    config_checks.validate(run.config())
  if runs:
    registry.load_dataset(run_settings.data_settings(runs[0].config()))


def execute(run: Run) -> None:
  config = run.config()
  if run.pipeline:
    pipeline.run_pipeline(config, run.workdir)
  elif run_dir.RunDir(run.workdir).is_finished(config.num_epochs, config.target_hr):
    print(f'[{run.name}] finished earlier', flush=True)
  else:
    print(f'[{run.name}] {run.command()}', flush=True)
    train.train_and_evaluate(config, run.workdir)


def _row(experiment: str, run: Run) -> dict:
  row = dict(report.summarize_run(run.result_dir(), full_ranking=FLAGS.full_ranking),
             **run.labels, name=run.name, command=run.command())
  workdir = os.path.relpath(run.result_dir())
  row['workdir'] = workdir if not workdir.startswith('..') else run.result_dir()
  if experiment == 'table2':
    row['paper_hr'], row['paper_ndcg'] = PAPER_TABLE2[(row['factors'], row['pretrained'])]
  elif experiment == 'table3' and row['factors'] == 8:
    row['paper_hr'] = PAPER_TABLE3_F8[row['hidden_layers']]
  return row


def item_popularity_row() -> dict:
  """ItemPop (rank by training popularity) through the same metric code."""
  config = __import__('ncf_jax.configs.default', fromlist=['get_config']).get_config()
  config.dataset, config.validation = FLAGS.dataset, FLAGS.validation
  if FLAGS.data_dir:
    config.data_dir = os.path.abspath(FLAGS.data_dir)
  dataset = registry.load_dataset(run_settings.data_settings(config))
  result = evaluation.item_popularity(dataset, config.top_k)
  return dict(name='itempop', model='itempop', factors=None, hr=result['hr'],
              ndcg=result['ndcg'], best_epoch=None, selection='none (no training)',
              command='python -m experiments.reproduce --experiment=factors (ItemPop row)')


def best_summary(rows: list[dict], command: str) -> dict:
  """summary.json's `best`: with several seeds, the ensemble of their runs (mean logits of
  each run's validation-selected checkpoint); with one, that run. Single runs listed too."""
  hrs, ndcgs = np.array([r['hr'] for r in rows]), np.array([r['ndcg'] for r in rows])
  single = [dict(seed=r['seed'], hr=r['hr'], ndcg=r['ndcg'], epoch=r['best_epoch'],
                 full_hr=r.get('full_hr'), full_ndcg=r.get('full_ndcg'), command=r['command'])
            for r in rows]
  name = f"{rows[0]['model']}-{rows[0]['factors']}"
  if len(rows) > 1:
    result = ensemble.evaluate_ensemble([os.path.abspath(r['workdir']) for r in rows])
    name = f'{name}, ensemble of {len(rows)} seeds (mean logits)'
  else:
    result = single[0]
  return dict(model=name, hr=result['hr'], ndcg=result['ndcg'], full_hr=result['full_hr'],
              full_ndcg=result['full_ndcg'], selection='validation', command=command,
              single_runs=single, single_mean_hr=float(hrs.mean()),
              single_std_hr=float(hrs.std(ddof=1)) if len(rows) > 1 else 0.0,
              single_mean_ndcg=float(ndcgs.mean()),
              single_std_ndcg=float(ndcgs.std(ddof=1)) if len(rows) > 1 else 0.0,
              reference='Rendle et al. (2020), MF at dimension 192, mean of 8 runs: '
                        'HR@10 0.7294, NDCG@10 0.4523')


def seed_statistics(rows: list[dict], group_by: list[str]) -> list[str]:
  """One markdown line per group of runs that differ only in seed: mean ± std (ddof 1)."""
  groups = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in group_by), []).append(row)
  lines = []
  for key, group in groups.items():
    stats = []
    for metric in ('hr', 'ndcg', 'full_hr', 'full_ndcg'):
      values = np.array([r[metric] for r in group if r.get(metric) is not None])
      if len(values) == len(group):
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        stats.append(f'{metric} {values.mean():.4f} ± {std:.4f}')
    name = ', '.join(f'{k} {v}' for k, v in zip(group_by, key))
    seeds = f"{len(group)} seed{'s' if len(group) > 1 else ''}"
    lines.append(f'- {name}: {seeds}, test at the selected epoch: ' + '; '.join(stats))
  return lines


def _cell(value, fmt: str = '.4f') -> str:
  return '' if value is None else format(value, fmt)


def _update_summary(out_dir: str, key: str, value) -> None:
  """Sets one entry of `summary.json`, keeping the others."""
  path = os.path.join(out_dir, 'summary.json')
  summary = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      summary = json.load(f)
  summary[key] = value
  atomic_write_text(path, json.dumps(summary, indent=2) + '\n')


def write_results(experiment: str, runs: list[Run]) -> list[dict]:
  """Tables (markdown + JSON), summary.json's table2 and, with matplotlib, the plot."""
  rows = []
  for run in runs:
    config = run.config()
    if run_dir.RunDir(run.result_dir()).is_finished(config.num_epochs, config.target_hr):
      rows.append(_row(experiment, run))
    else:
      print(f'[{run.name}] not finished: left out of the results', flush=True)
  if experiment == 'factors':
    rows.append(item_popularity_row())
  changed = {name: FLAGS[name].value
             for name in ('factors', 'mf_factors', 'seeds', 'num_epochs', 'seed', 'validation')
             if FLAGS[name].value != FLAGS[name].default}
  command = 'python -m experiments.reproduce --experiment=' + experiment + ''.join(
      f' --{name}={",".join(value) if isinstance(value, list) else value}'
      for name, value in changed.items())
  out_dir = FLAGS.results_dir
  if FLAGS.validation and experiment not in ('seeds', 'best'):
    experiment += '_validation'
  os.makedirs(out_dir, exist_ok=True)
  run_labels = list(runs[0].labels)
  lines = [f'# {experiment} (ML-1M)\n', f'Made by `{command}`; each run\'s own command is in '
           f'`{experiment}.json`. "best": the epoch chosen on the selection split; "last": '
           'the final epoch; full: full-ranking HR@10 / NDCG@10 of the best checkpoint.\n',
           stream.stream_line() + '\n',
           '| run | ' + ' | '.join(run_labels) + ' | best epoch | HR@10 | NDCG@10 '
           '| last HR@10 | last NDCG@10 | full HR@10 | full NDCG@10 | paper |',
           '|---|' + '---|' * (len(run_labels) + 8)]
  for row in rows:
    paper = (f"{row['paper_hr']:.3f}" + (f" / {row['paper_ndcg']:.3f}" if 'paper_ndcg' in row
                                         else '')) if 'paper_hr' in row else ''
    best = '' if row['best_epoch'] is None else f"{row['best_epoch']}, on {row['selection']}"
    lines.append(f"| {row['name']} | " + ' | '.join(str(row.get(k, '')) for k in run_labels)
                 + f" | {best} | {row['hr']:.4f} | {row['ndcg']:.4f} | "
                 f"{_cell(row.get('last_hr'))} | {_cell(row.get('last_ndcg'))} | "
                 f"{_cell(row.get('full_hr'))} | {_cell(row.get('full_ndcg'))} | {paper} |")
  if 'seed' in run_labels:
    lines += ['', *seed_statistics(rows, [k for k in run_labels if k != 'seed'])]
  best = None
  if experiment == 'best' and rows:
    best_command = f'{command} --data_dir={FLAGS.data_dir}'
    best = best_summary(rows, best_command)
    lines += [f"- {best['model']}: test HR@10 {best['hr']:.4f}, NDCG@10 {best['ndcg']:.4f}; "
              f"full ranking {best['full_hr']:.4f} / {best['full_ndcg']:.4f}"]
  atomic_write_text(os.path.join(out_dir, f'{experiment}.md'), '\n'.join(lines) + '\n')
  atomic_write_text(os.path.join(out_dir, f'{experiment}.json'),
                    json.dumps(dict(experiment=experiment, command=command, rows=rows), indent=1)
                    + '\n')
  if experiment == 'table2':
    _update_summary(out_dir, 'table2', [
        {k: row[k] for k in ('factors', 'pretrained', 'hr', 'ndcg', 'paper_hr', 'paper_ndcg',
                             'command', 'selection')} for row in rows])
  if best is not None:
    _update_summary(out_dir, 'best', best)
  print('\n'.join(lines))
  try:
    from experiments import plots
  except ImportError:
    return rows
  try:
    print(plots.make_all(out_dir, os.getcwd()))
  except ImportError:
    print('no plots: pip install -e ".[plots]"')
  return rows


def main(argv):
  del argv
  if FLAGS.experiment == 'baselines':  # its own grids, peer and ensembles
    from experiments import baselines  # pylint: disable=g-import-not-at-top
    out = baselines.run(FLAGS, sys.modules[__name__])
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    atomic_write_text(os.path.join(FLAGS.results_dir, 'baselines.md'), baselines.markdown(out))
    baselines.write_json(os.path.join(FLAGS.results_dir, 'baselines.json'), out)
    _update_summary(FLAGS.results_dir, 'baselines',
                    json.loads(json.dumps(out['baselines'], default=baselines._json_default)))
    # The stored entries whose runs are elsewhere: exact HR intervals from their counts.
    from experiments import stored_intervals  # pylint: disable=g-import-not-at-top
    path = os.path.join(FLAGS.results_dir, 'summary.json')
    with open(path, encoding='utf-8') as f:
      summary = stored_intervals.update_summary(json.load(f))
    atomic_write_text(path, json.dumps(summary, indent=2) + '\n')
    print(baselines.markdown(out))
    return
  runs = plan(FLAGS.experiment)
  if FLAGS.dry_run:
    for run in runs:
      print(run.command())
    return
  if not FLAGS.write_only:
    check_before_training(runs)
    for run in runs:
      execute(run)
  write_results(FLAGS.experiment, runs)


if __name__ == '__main__':
  cli.run(main, define_flags, interrupted_note=cli.RESUMES_NOTE)
