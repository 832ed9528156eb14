"""Markdown summary of finished runs: `python -m experiments.report WORKDIR [WORKDIR ...]`.

For each workdir: model and size from config.json; the best epoch by the
selection metric (validation HR when the run had a holdout, otherwise test HR,
labelled as such); test HR/NDCG there; the median training seconds per epoch.
"""

import json
import os
import statistics
import sys


def summarize_run(workdir: str) -> dict:
  """The numbers of one workdir, as a dict."""
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    config = json.load(f)
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  on_valid = all('valid_hr' in r for r in records)
  key = 'valid_hr' if on_valid else 'hr'
  best = max(records, key=lambda r: r[key])  # the first epoch reaching the max
  train = [r['train_seconds'] for r in records if r.get('train_seconds')]
  return dict(workdir=workdir, model=config['model'], num_factors=config['num_factors'],
              layers=config.get('layers'), batch_size=config['batch_size'],
              optimizer=config['optimizer'], learning_rate=config['learning_rate'],
              epochs=records[-1]['epoch'], best_epoch=best['epoch'],
              selection='validation' if on_valid else 'test (as in the paper)',
              hr=best['hr'], ndcg=best['ndcg'],
              median_epoch_seconds=statistics.median(train) if train else None)


def markdown(rows: list[dict]) -> str:
  head = ('| run | model | factors | batch | optimizer | best epoch (selected on) | HR@10 | '
          'NDCG@10 | s/epoch |\n|---|---|---|---|---|---|---|---|---|\n')
  return head + ''.join(
      f"| {os.path.basename(r['workdir'].rstrip('/'))} | {r['model']} | {r['num_factors']} | "
      f"{r['batch_size']} | {r['optimizer']} {r['learning_rate']:g} | {r['best_epoch']} of "
      f"{r['epochs']} ({r['selection']}) | {r['hr']:.4f} | {r['ndcg']:.4f} | "
      f"{r['median_epoch_seconds'] or float('nan'):.1f} |\n" for r in rows)


if __name__ == '__main__':
  print(markdown([summarize_run(w) for w in sys.argv[1:]]), end='')
