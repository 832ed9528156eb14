"""Every "A beats B" claim of the README's results, with the test the runs on this machine allow.

  python -m experiments.claims --data_dir=DIR/ml-1m [--runs64=/work/runs64]
      [--epoch_runs=/work/epoch_runs]

Three kinds of evidence, strongest first:
- paired: both models' per-user test ranks are here (the baselines experiment's paired
  bootstrap in baselines.json, or two workdirs whose best checkpoints are re-evaluated with
  the project's evaluator): paired bootstrap over users (10,000 resamples), one-sided p.
- unpaired: a side's run is not on this machine, only its stored HR@10. Each HR gets its exact
  bootstrap interval from its hit count (`stored_intervals`); the difference is tested with
  the independence bound z = Δ / sqrt(se_A² + se_B²): two models' hits on the same users are
  positively correlated, which only shrinks the variance of Δ, so p ≤ Φ(-z) (an upper bound).
- published: B is a published figure (no per-user data): whether it lies inside A's 95%
  interval (the published figure's own sampling error, about as large, is not counted).

Writes `experiments/results/claims.md` and `claims.json`. Stored figures are read from the
results files by run name; published ones are the papers'.
"""

import json
import os

from absl import flags
import numpy as np

from experiments import stored_intervals
from experiments import stream
from ncf_jax import cli
from ncf_jax import statistics
from ncf_jax.data.files import atomic_write_text

NUM_USERS = stored_intervals.NUM_USERS_ML1M
PAPER_TABLE2 = {(8, False): .688, (8, True): .684, (16, False): .696, (16, True): .707,
                (32, False): .701, (32, True): .726, (64, False): .705, (64, True): .730}
RENDLE_MF192 = (0.7294, 0.4523)  # Rendle et al. (2020), MF-192, mean of 8 runs
IALS_REPRODUCTION = (0.7310, 0.4521)  # the independent iALS reproduction of issue #23


def _rows(results_dir: str, name: str) -> dict:
  with open(os.path.join(results_dir, f'{name}.json'), encoding='utf-8') as f:
    return {r['name']: r for r in json.load(f)['rows']}


def _se(hr: float) -> float:
  return float(np.sqrt(hr * (1 - hr) / NUM_USERS))


def unpaired(a_name: str, a_hr: float, b_name: str, b_hr: float, why: str) -> dict:
  """A beats B from two stored HRs (see the module docstring)."""
  diff = a_hr - b_hr
  z = diff / np.hypot(_se(a_hr), _se(b_hr))
  from scipy import stats  # pylint: disable=g-import-not-at-top  (0.7 s: only when used)
  p_bound = float(stats.norm.sf(z))
  ci = lambda hr: stored_intervals.hr_interval_from_count(
      stored_intervals.hits_from_hr(hr, NUM_USERS), NUM_USERS)
  return dict(kind='unpaired', a=a_name, b=b_name, a_hr=a_hr, b_hr=b_hr, a_hr_ci95=ci(a_hr),
              b_hr_ci95=ci(b_hr), hr_difference=diff, p_upper_bound=p_bound,
              verdict=('supported without pairing' if p_bound < 0.05 else
                       'not shown (unpaired: ' + why + ')'))


def against_published(a_name: str, a_hr: float, b_name: str, b_hr: float) -> dict:
  lo, hi = stored_intervals.hr_interval_from_count(
      stored_intervals.hits_from_hr(a_hr, NUM_USERS), NUM_USERS)
  where = 'above' if b_hr > hi else 'below' if b_hr < lo else 'inside'
  return dict(kind='published', a=a_name, b=b_name, a_hr=a_hr, b_hr=b_hr, a_hr_ci95=(lo, hi),
              hr_difference=a_hr - b_hr,
              verdict=f'the published figure is {where} our 95% interval')


def over_seeds(a_name: str, a_values, b_name: str, b_values) -> dict:
  """A's seeds beat B's: Welch's t-test on the per-seed HR@10 (one-sided); the spread over
  seeds, not over users, is the noise here."""
  a, b = np.asarray(a_values, np.float64), np.asarray(b_values, np.float64)
  from scipy import stats  # pylint: disable=g-import-not-at-top
  result = stats.ttest_ind(a, b, equal_var=False, alternative='greater')
  return dict(kind='over seeds', a=f'{a_name} ({len(a)} seeds)', b=f'{b_name} ({len(b)} seeds)',
              a_hr=float(a.mean()), b_hr=float(b.mean()), hr_difference=float(a.mean() - b.mean()),
              p_value=float(result.pvalue),
              verdict='supported (p < 0.05)' if result.pvalue < 0.05 else
              f'not significant (p = {result.pvalue:.3f})')


def _same_stats(seeds: dict, brief: dict) -> bool:
  return all(seeds[k] == brief[k] for k in ('hr', 'ndcg'))


def paired_from_ranks(a_name: str, a_ranks, b_name: str, b_ranks) -> dict:
  ua, ub = (statistics.per_user_metrics(r, 10) for r in (a_ranks, b_ranks))
  hr = statistics.paired_bootstrap(ua['hit'], ub['hit'])
  ndcg = statistics.paired_bootstrap(ua['ndcg'], ub['ndcg'])
  return _paired_row(a_name, b_name, hr, ndcg, float(ua['hit'].mean()), float(ub['hit'].mean()))


def _paired_row(a, b, hr, ndcg, a_hr=None, b_hr=None) -> dict:
  return dict(kind='paired', a=a, b=b, a_hr=a_hr, b_hr=b_hr, hr_difference=hr['difference'],
              hr_difference_ci95=hr['ci95'], p_value=hr['p_value'],
              ndcg_difference=ndcg['difference'], ndcg_p_value=ndcg['p_value'],
              verdict='supported (p < 0.05)' if hr['p_value'] < 0.05 else
              f"not significant (p = {hr['p_value']:.3f})")


class Workdirs:
  """Per-user test ranks of finished runs on this machine (best checkpoint re-evaluated)."""

  def __init__(self, data_dir: str | None):
    self.source = stored_intervals.RankSource(None, data_dir) if data_dir else None

  def ranks(self, workdir: str):
    from ncf_jax import run_dir  # pylint: disable=g-import-not-at-top
    if self.source is None or not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
      return None
    run = run_dir.RunDir(workdir)
    if run.read_metrics()[-1]['epoch'] < int(run.read_config().num_epochs):
      return None  # still training: its best so far is no result
    return stored_intervals.workdir_ranks(workdir, self.source.dataset())


def collect(results_dir: str, data_dir: str | None, runs64: str | None,
            epoch_runs: str | None) -> list[dict]:
  """The claims, each with where it is made and its test."""
  claims = []

  def add(where, text, result):
    claims.append(dict(where=where, claim=text, **result))

  not_here = 'runs not on this machine'
  t2, factors = _rows(results_dir, 'table2'), _rows(results_dir, 'factors')
  for (f, pre), paper in sorted(PAPER_TABLE2.items()):
    row = t2[f'neumf-pre-{f}' if pre else f'neumf-{f}']
    add('README, Table 2', f"NeuMF-{f}{' pretrained' if pre else ''} vs the paper",
        against_published(f"ncf-jax NeuMF-{f}{', pretrained' if pre else ''}", row['hr'],
                          'He et al. (2017)', paper))
  for f in (8, 16, 32, 64):
    pre = t2[f'neumf-pre-{f}']['hr']
    gmf, mlp = factors[f'gmf-{f}']['hr'], factors[f'mlp-{f}']['hr']
    better = ('GMF', gmf) if gmf >= mlp else ('MLP', mlp)
    add('README, Table 2 notes / pretrained.md',
        f'pretrained NeuMF-{f} above its better tower ({better[0]}-{f})',
        unpaired(f'NeuMF-{f} pretrained', pre, f'{better[0]}-{f}', better[1], not_here))
  add('README, Table 2 notes', 'pretrained NeuMF-8 above its other tower (GMF-8)',
      unpaired('NeuMF-8 pretrained', t2['neumf-pre-8']['hr'], 'GMF-8', factors['gmf-8']['hr'],
               not_here))
  negatives = _rows(results_dir, 'negatives')
  # The README's "rises from (1 negative) to (n negatives)" for each model.
  for model, n in (('neumf', 4), ('mlp', 10), ('gmf', 9)):
    add('README, negatives', f'{model.upper()}-8: {n} negatives above 1',
        unpaired(f'{model}, {n} negatives', negatives[f'{model}-neg{n}']['hr'],
                 f'{model}, 1 negative', negatives[f'{model}-neg1']['hr'], not_here))
  seeds = _rows(results_dir, 'seeds')
  add('README, honest protocol', 'NeuMF-8 with its epoch picked on test above picked on '
      'validation (seed 0)', unpaired('NeuMF-8, epoch on test', t2['neumf-8']['hr'],
                                      'NeuMF-8, epoch on validation', seeds['neumf-8-seed0']['hr'],
                                      not_here))
  with open(os.path.join(results_dir, 'summary.json'), encoding='utf-8') as f:
    summary = json.load(f)
  best = summary['best']
  add('README, best model', 'MF-192 ensemble of 3 seeds vs Rendle et al.\'s MF-192',
      against_published('MF-192, ensemble of 3 seeds', best['hr'], 'Rendle et al. (2020)',
                        RENDLE_MF192[0]))
  add('README, best model', 'MF-192 ensemble above its single run (seed 0)',
      unpaired('MF-192, ensemble of 3', best['hr'], 'MF-192 seed 0',
               best['single_runs'][0]['hr'], not_here))
  mf, neumf64 = factors['mf-192']['hr'], factors['neumf-64']['hr']
  add('README, factors figure', 'MF-192 above NeuMF-64 (best test epochs)',
      unpaired('MF-192', mf, 'NeuMF-64', neumf64, not_here))

  # The baselines: their own paired tests (both sides' per-user ranks were at hand).
  path = os.path.join(results_dir, 'baselines.json')
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      baselines = json.load(f)
    hr_of = {e['model']: e['hr'] for e in baselines['baselines']}
    for p in baselines['paired']:
      add('README, baselines (baselines.json)', f"{p['a']} vs {p['b']}",
          _paired_row(p['a'], p['b'], p['hr'], p['ndcg'], hr_of.get(p['a']), hr_of.get(p['b'])))
    top = baselines['best']
    if isinstance(top.get('seed_stats'), dict):
      runs = next(s['runs'] for k, s in baselines['seeds'].items()
                  if k != 'implicit-als' and _same_stats(s, top['seed_stats']))
      add('README, baselines', f"the best baseline ({top['model']}) over its seeds vs "
          'MF-192\'s single runs', over_seeds(f"{top['model']}, per seed",
                                               [r['hr'] for r in runs], 'MF-192, per seed',
                                               [r['hr'] for r in best['single_runs']]))
    if 'implicit-als' in baselines['seeds'] and 'ials' in baselines['seeds']:
      add('README, baselines', 'iALS-192 over its seeds vs implicit-als over its seeds',
          over_seeds('iALS-192, per seed', [r['hr'] for r in baselines['seeds']['ials']['runs']],
                     'implicit-als, per seed',
                     [r['hr'] for r in baselines['seeds']['implicit-als']['runs']]))
    add('README, baselines', f"the best baseline ({top['model']}) vs MF-192's ensemble",
        unpaired(top['model'], top['hr'], 'MF-192, ensemble of 3 seeds', best['hr'],
                 'the MF-192 runs are not on this machine'))
    add('README, baselines', f"the best baseline ({top['model']}) vs the iALS reproduction",
        against_published(top['model'], top['hr'], 'independent iALS reproduction',
                          IALS_REPRODUCTION[0]))

  # Re-runs and the batch-256 column, from their workdirs when they are here and finished.
  workdirs = Workdirs(data_dir)
  if epoch_runs:
    ranks = workdirs.ranks(os.path.join(epoch_runs, 'neumf8'))
    if ranks is not None:
      hr = float(np.mean(ranks < 10))
      add('README, re-runs on stream NCF1', 'NeuMF-8 on stream NCF1 vs the recorded np-rng run',
          unpaired('NeuMF-8, NCF1', hr, 'NeuMF-8, np-rng (recorded)', t2['neumf-8']['hr'],
                   'the np-rng run is not on this machine'))
  if runs64:
    b256 = {name: os.path.join(runs64, *name.split('/')) for name in
            ('neumf-64', 'pre-64/gmf', 'pre-64/mlp', 'pre-64/neumf')}
    ranks = {name: workdirs.ranks(path) for name, path in b256.items()}
    pairs = [('pre-64/neumf', 'neumf-64', 'pretrained NeuMF-64 above NeuMF-64 without, batch 256'),
             ('pre-64/neumf', 'pre-64/gmf', 'pretrained NeuMF-64 above its GMF tower, batch 256'),
             ('pre-64/gmf', 'pre-64/mlp', 'GMF-64 above MLP-64, batch 256')]
    for a, b, text in pairs:
      if ranks[a] is not None and ranks[b] is not None:
        add('table2_batch256.md', text, paired_from_ranks(a, ranks[a], b, ranks[b]))
      else:
        add('table2_batch256.md', text, dict(kind='pending', a=a, b=b, verdict=(
            'not tested yet: ' + ', '.join(n for n in (a, b) if ranks[n] is None)
            + ' not finished (background runs); rerun this command when they are')))
    for name, batch1024 in (('pre-64/gmf', factors['gmf-64']['hr']),
                            ('pre-64/mlp', factors['mlp-64']['hr'])):
      if ranks[name] is not None:
        add('README, Table 2 at batch 256', f'{name} at batch 256 vs batch 1024',
            unpaired(f'{name}, batch 256', float(np.mean(ranks[name] < 10)),
                     f'{name}, batch 1024', batch1024, 'the batch-1024 runs are not here'))
  return claims


def _fmt(value, digits=4) -> str:
  if value is None:
    return ''
  if isinstance(value, (list, tuple)):
    return '[' + ', '.join(f'{v:.{digits}f}' for v in value) + ']'
  return f'{value:.{digits}f}'


# The claims read figures of several streams; each row's source file names its own.
CLAIMS_STREAM_LINE = (
    f'Stream of record: NumPy-rng feeder (`np-rng`), commit {stream.NP_RNG_COMMIT_OF_RECORD} '
    'for the stored tables and the batch-256 runs; the NeuMF-8 re-run and the baselines are '
    'stream `NCF1` or draw no examples (each row\'s source file says which).')


def markdown(claims: list[dict], command: str) -> str:
  lines = ['# Claims of the form "A beats B" and their tests (HR@10)\n',
           f'Made by `{command}` (see experiments/claims.py for the three kinds of test). '
           'paired: paired bootstrap over the same 6,040 users, one-sided p. unpaired: exact '
           'bootstrap intervals from the stored hit counts and p ≤ Φ(-z) with z = Δ / '
           'sqrt(se_A² + se_B²) (an upper bound: hits on the same users are positively '
           'correlated). published: whether the published figure lies in our interval.\n',
           CLAIMS_STREAM_LINE + '\n',
           '| where | claim | A HR@10 [95% CI] | B HR@10 [95% CI] | Δ | p | kind | verdict |',
           '|---|---|---|---|---|---|---|---|']
  for c in claims:
    p = c.get('p_value', c.get('p_upper_bound'))
    p_text = '' if p is None else (f'≤ {p:.4f}' if 'p_upper_bound' in c else f'{p:.4f}')
    lines.append(f"| {c['where']} | {c['claim']} | {_fmt(c.get('a_hr'))} "
                 f"{_fmt(c.get('a_hr_ci95'))} | {_fmt(c.get('b_hr'))} "
                 f"{_fmt(c.get('b_hr_ci95'))} | {_fmt(c.get('hr_difference'))} | {p_text} | "
                 f"{c['kind']} | {c['verdict']} |")
  return '\n'.join(lines) + '\n'


def define_flags() -> None:
  flags.DEFINE_string('results_dir', os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  'results'), 'The results files.')
  flags.DEFINE_string('data_dir', None, 'ML-1M (NCF format), to re-evaluate workdirs.')
  flags.DEFINE_string('runs64', None, 'Table 2\'s 64-factor runs at batch 256.')
  flags.DEFINE_string('epoch_runs', None, 'The NCF1 re-runs (neumf8).')


def main(argv):
  del argv
  values = flags.FLAGS
  claims = collect(values.results_dir, values.data_dir and os.path.abspath(values.data_dir),
                   values.runs64, values.epoch_runs)
  command = 'python -m experiments.claims --data_dir=DIR/ml-1m' + (
      f' --runs64={values.runs64}' if values.runs64 else '') + (
          f' --epoch_runs={values.epoch_runs}' if values.epoch_runs else '')
  text = markdown(claims, command)
  atomic_write_text(os.path.join(values.results_dir, 'claims.md'), text)
  atomic_write_text(os.path.join(values.results_dir, 'claims.json'),
                    json.dumps(dict(command=command, claims=claims), indent=1) + '\n')
  print(text)


if __name__ == '__main__':
  cli.run(main, define_flags)
