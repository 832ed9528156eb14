"""Markdown summary of finished runs: `python -m experiments.report WORKDIR [WORKDIR ...]`.

For each workdir: model and size from config.json; the best epoch by the
selection metric (validation HR when the run had a holdout, otherwise test HR,
labelled as such); test HR/NDCG there and at the last epoch (a choice that
never looks at test); full-ranking HR/NDCG of the best checkpoint; the median
training seconds per epoch.
"""

import json
import os
import statistics

from ncf_jax import cli
from ncf_jax import evaluation
from ncf_jax import provenance
from ncf_jax import run_dir
from ncf_jax import trained_run
from ncf_jax.data.files import atomic_write_text

FULL_RANKING_FILE = 'full_ranking.json'


def full_ranking_at_best(workdir: str, epoch: int | None = None) -> dict:
  """{'epoch', 'hr', 'ndcg'} of the best checkpoint ranked against all items.

  Computed from the checkpoint when the run did not evaluate full ranking
  itself, then cached in `<workdir>/full_ranking.json`; a cache of another
  epoch than `epoch` (the run went on and found a new best) is recomputed.
  """
  path = os.path.join(workdir, FULL_RANKING_FILE)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      cached = json.load(f)
    if epoch is None or cached.get('epoch') == epoch:
      return cached
  dataset = provenance.load_run_dataset(workdir)
  trained = trained_run.load_best(workdir, dataset.num_users, dataset.num_items)
  result = evaluation.full_ranking_evaluator(trained.model, dataset)(trained.params,
                                                                      trained.config.top_k)
  out = dict(epoch=int(trained.epoch), hr=float(result['hr']), ndcg=float(result['ndcg']))
  atomic_write_text(path, json.dumps(out) + '\n')
  return out


def summarize_run(workdir: str, full_ranking: bool = False) -> dict:
  """The numbers of one workdir, as a dict; `full_ranking` adds full_hr/full_ndcg."""
  run = run_dir.RunDir(workdir)
  config = run.read_config_json()
  records = run.read_metrics()
  on_valid = run_dir.selection_key(records) == 'valid_hr'
  best = run_dir.best_record(records)
  train = [r['train_seconds'] for r in records if r.get('train_seconds')]
  row = dict(workdir=workdir, model=config['model'], num_factors=config['num_factors'],
             layers=config.get('layers'), batch_size=config['batch_size'],
             optimizer=config['optimizer'], learning_rate=config['learning_rate'],
             schedule=config.get('learning_rate_schedule', 'constant'),
             epochs=records[-1]['epoch'], best_epoch=best['epoch'],
             selection='validation' if on_valid else 'test (as in the paper)',
             hr=best['hr'], ndcg=best['ndcg'], last_hr=records[-1]['hr'],
             last_ndcg=records[-1]['ndcg'],
             median_epoch_seconds=statistics.median(train) if train else None)
  if on_valid:
    row.update(valid_hr=best['valid_hr'], valid_ndcg=best['valid_ndcg'])
  if 'full_hr' in best:
    row.update(full_hr=best['full_hr'], full_ndcg=best['full_ndcg'])
  elif full_ranking:
    full = full_ranking_at_best(workdir, best['epoch'])
    if full['epoch'] == best['epoch']:
      row.update(full_hr=full['hr'], full_ndcg=full['ndcg'])
  return row


def markdown(rows: list[dict]) -> str:
  head = ('| run | model | factors | batch | optimizer | best epoch (selected on) | valid HR@10 | '
          'HR@10 | NDCG@10 | last HR@10 / NDCG@10 | s/epoch |\n'
          '|---|---|---|---|---|---|---|---|---|---|---|\n')
  return head + ''.join(
      f"| {os.path.basename(r['workdir'].rstrip('/'))} | {r['model']} | {r['num_factors']} | "
      f"{r['batch_size']} | {r['optimizer']} {r['learning_rate']:g}"
      f"{'' if r['schedule'] == 'constant' else ' ' + r['schedule']} | {r['best_epoch']} of "
      f"{r['epochs']} ({r['selection']}) | "
      f"{format(r['valid_hr'], '.4f') if 'valid_hr' in r else ''} | {r['hr']:.4f} | "
      f"{r['ndcg']:.4f} | {r['last_hr']:.4f} / {r['last_ndcg']:.4f} | "
      f"{r['median_epoch_seconds'] or float('nan'):.1f} |\n" for r in rows)


def main(argv: list[str]) -> None:
  print(markdown([summarize_run(w) for w in argv[1:]]), end='')


if __name__ == '__main__':
  cli.run(main, max_args=10_000)
