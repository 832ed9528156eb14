"""95% intervals for the stored results whose runs are not on this machine.

  python -m experiments.stored_intervals [--data_dir=DIR/ml-1m] [--runs_root=DIR]

HR@10 is the mean over users of a 0/1 hit. Resampling n users with replacement (the
bootstrap of `ncf_jax/statistics.py`), each draw is a hit with probability H/n whatever
users hold the H hits, so a resample's hit count is Binomial(n, H/n) and the percentile
bootstrap interval is, in the limit of many resamples, the binomial's 2.5% and 97.5%
quantiles over n. That limit needs only the stored HR (H = HR·n) and n, so it is written
for every stored entry (`hr_ci95`, `hr_ci95_method`). A seeded 1,000-resample bootstrap of
the per-user vector approximates it to a few users' hits (about ±0.0005 at HR 0.7 and
6,040 users): which users hit changes which resamples land on hits, not the distribution.

NDCG@10 is a mean of per-user values 1/log2(rank + 2), a function of the ranks, not of a
count: its interval needs each user's rank. Where a row's workdir is on this machine
(`--runs_root`), its best checkpoint is re-evaluated and both intervals come from the
per-user ranks (`ndcg_ci95`); ItemPop needs no run (`--data_dir`). Elsewhere `ndcg_ci95`
is null with `ndcg_ci95_note` saying why. Nothing is invented.

Updates `summary.json` (`table2`, `best` and its single runs) and the `rows` of the
experiments' JSON files (table2, factors, table3, negatives, seeds, best).
"""

import json
import os

from absl import flags
import numpy as np

from ncf_jax import cli
from ncf_jax import statistics
from ncf_jax.data.files import atomic_write_text

NUM_USERS_ML1M = 6040
EXPERIMENT_FILES = ('table2', 'factors', 'table3', 'negatives', 'seeds', 'best')
HR_METHOD = ('exact percentile bootstrap over users (the limit of statistics.py\'s bootstrap: '
             'binomial quantiles of the hit count, from the stored HR and the number of users)')
HR_METHOD_PER_USER = 'percentile bootstrap over users (statistics.py, 1,000 resamples, seed 0)'
NDCG_NOTE = ('not available: NDCG@10\'s interval needs each user\'s rank (not a function of a '
             'count) and this run\'s workdir is not on this machine')


def hits_from_hr(hr: float, num_users: int) -> int:
  """The hit count behind a stored HR; an HR that is no count over `num_users` is an error."""
  hits = int(round(hr * num_users))
  if abs(hr * num_users - hits) > 1e-6:  # float rounding of a stored count only
    raise ValueError(f'HR {hr!r} is not a count over {num_users} users')
  return hits


def hr_interval_from_count(hits: int, num_users: int,
                           level: float = statistics.CI_LEVEL) -> tuple[float, float]:
  """The percentile bootstrap interval of a mean of `hits` ones among `num_users` 0/1 values,
  exactly (infinitely many resamples): quantiles of Binomial(n, hits/n) over n."""
  tail = (1.0 - level) / 2
  from scipy import stats  # pylint: disable=g-import-not-at-top  (0.7 s: only when used)
  dist = stats.binom(num_users, hits / num_users)
  return (float(dist.ppf(tail)) / num_users, float(dist.ppf(1.0 - tail)) / num_users)


def intervals_from_ranks(ranks: np.ndarray, top_k: int = 10) -> dict:
  fields = statistics.interval_fields(ranks, top_k)
  return dict(hr_ci95=fields['hr_ci95'], ndcg_ci95=fields['ndcg_ci95'],
              hr_ci95_method=HR_METHOD_PER_USER, ndcg_ci95_method=HR_METHOD_PER_USER)


def intervals_from_hr(hr: float, num_users: int = NUM_USERS_ML1M, note: str = NDCG_NOTE) -> dict:
  return dict(hr_ci95=hr_interval_from_count(hits_from_hr(hr, num_users), num_users),
              hr_ci95_method=HR_METHOD, ndcg_ci95=None, ndcg_ci95_note=note)


def _drop_old(entry: dict) -> None:
  for key in ('hr_ci95_wald', 'ci_note', 'hr_ci95', 'ndcg_ci95', 'hr_ci95_method',
              'ndcg_ci95_method', 'ndcg_ci95_note'):
    entry.pop(key, None)


def with_intervals(entry: dict, per_user_ranks=None, num_users: int = NUM_USERS_ML1M) -> dict:
  """`entry` with `hr_ci95` (and `ndcg_ci95` when `per_user_ranks` is given) replacing any
  older interval fields."""
  _drop_old(entry)
  if per_user_ranks is not None:
    entry.update(intervals_from_ranks(per_user_ranks))
  else:
    entry.update(intervals_from_hr(entry['hr'], num_users))
  return entry


def workdir_ranks(workdir: str, dataset) -> np.ndarray:
  """Each test user's sampled rank at a run's best checkpoint (the project's evaluator)."""
  from ncf_jax import evaluation  # pylint: disable=g-import-not-at-top
  from ncf_jax import trained_run  # pylint: disable=g-import-not-at-top
  trained = trained_run.load_best(workdir, dataset.num_users, dataset.num_items)
  return evaluation.SampledEvaluator(trained.model, dataset.test, 256).user_ranks(trained.params)


class RankSource:
  """Per-user test ranks where they can be had on this machine: a row's workdir under
  `runs_root`, or ItemPop computed from the data."""

  def __init__(self, runs_root: str | None, data_dir: str | None):
    self.runs_root, self.data_dir = runs_root, data_dir
    self._dataset = None

  def dataset(self):
    if self._dataset is None:  # the paper protocol's split (no validation holdout)
      from ncf_jax.configs import default  # pylint: disable=g-import-not-at-top
      from ncf_jax import run_settings  # pylint: disable=g-import-not-at-top
      from ncf_jax.data import registry  # pylint: disable=g-import-not-at-top
      config = default.get_config()
      config.dataset, config.validation, config.data_dir = 'ml-1m', False, self.data_dir
      self._dataset = registry.load_dataset(run_settings.data_settings(config))
    return self._dataset

  def ranks(self, row: dict):
    if row.get('model') == 'itempop' and self.data_dir:
      from ncf_jax import evaluation  # pylint: disable=g-import-not-at-top
      dataset = self.dataset()  # evaluation.item_popularity's rule, kept per user
      popularity, test = dataset.item_popularity, dataset.test
      return np.asarray(evaluation.ranks_from_scores(
          popularity[test.items], popularity[test.negatives],
          test.negatives != test.items[:, None]))
    workdir = row.get('workdir')
    if self.runs_root and self.data_dir and workdir:
      path = workdir if os.path.isabs(workdir) else os.path.join(self.runs_root, workdir)
      if os.path.exists(os.path.join(path, 'metrics.jsonl')):
        return workdir_ranks(path, self.dataset())
    return None


def update_summary(summary: dict, source: RankSource | None = None) -> dict:
  """`table2` and `best` (with its single runs) of summary.json gain intervals."""
  update_rows(summary.get('table2', []), source)
  best = summary.get('best')
  if best:
    # The ensemble's per-user ranks need all its runs: none of them is here.
    with_intervals(best)
    for run in best.get('single_runs', []):
      with_intervals(run)
  return summary


def update_rows(rows: list[dict], source: RankSource | None = None) -> list[dict]:
  for row in rows:
    ranks = source.ranks(row) if source else None
    recomputed = None if ranks is None else float(np.mean(np.asarray(ranks) < 10))
    if recomputed is not None and row.get('model') == 'itempop':
      # No training: the stored figure is today's evaluator on the data (its tie rule moved
      # it from 0.4538 to 0.4531 in #11), so the row takes the recomputed figures.
      ranks = np.asarray(ranks)
      row['hr'] = recomputed
      row['ndcg'] = float(np.mean(np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)))
    if recomputed is not None and abs(recomputed - row['hr']) > 1e-9:
      # Not the stored result (the code or data changed since): its ranks say nothing
      # about the stored figure, which keeps the interval of its count alone.
      with_intervals(row)
      row['ndcg_ci95_note'] = (f'not available: re-evaluated here the HR@10 is {recomputed:.4f}, '
                               f'not the stored {row["hr"]:.4f}, so these per-user ranks are '
                               'not the stored result\'s')
    else:
      with_intervals(row, ranks)
  return rows


def update_results_dir(results_dir: str, source: RankSource | None = None) -> list[str]:
  """Rewrites summary.json and the experiments' JSON files with intervals; returns paths."""
  written = []
  path = os.path.join(results_dir, 'summary.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      summary = json.load(f)
    atomic_write_text(path, json.dumps(update_summary(summary, source), indent=2) + '\n')
    written.append(path)
  for name in EXPERIMENT_FILES:
    path = os.path.join(results_dir, f'{name}.json')
    if not os.path.exists(path):
      continue
    with open(path, encoding='utf-8') as f:
      table = json.load(f)
    update_rows(table.get('rows', []), source)
    atomic_write_text(path, json.dumps(table, indent=1) + '\n')
    written.append(path)
  return written


def define_flags() -> None:
  flags.DEFINE_string('results_dir', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  'results'), 'Where summary.json is.')
  flags.DEFINE_string('data_dir', None, 'ML-1M (NCF format): ItemPop\'s per-user ranks, and '
                      'the data for re-evaluating runs found under --runs_root.')
  flags.DEFINE_string('runs_root', None, 'The folder the rows\' relative workdirs are under.')


def main(argv):
  del argv
  values = flags.FLAGS
  source = RankSource(values.runs_root and os.path.abspath(values.runs_root),
                      values.data_dir and os.path.abspath(values.data_dir))
  for path in update_results_dir(values.results_dir, source):
    print(f'intervals written: {path}')


if __name__ == '__main__':
  cli.run(main, define_flags)
