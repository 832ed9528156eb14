"""Baselines with uncertainty: EASE, iALS, the `implicit` library's ALS, ensembles.

  python -m experiments.reproduce --experiment=baselines --data_dir=DIR/ml-1m

Every model is trained with a validation holdout (one more interaction per user carved out
of training) and every choice (EASE's λ, iALS's α0 and λ, implicit's α and λ, the epoch,
ensemble weights) is made on validation HR@10; test is read once, at the chosen setting.

- EASE (configs/ease.py) over a grid of λ; deterministic (one run: the closed form has no
  seed). iALS (configs/ials.py) over a grid of (α0, λ) at 192 dimensions, then the chosen
  setting at `--seeds` (mean ± 95% t-interval over seeds).
- The peer: `implicit.cpu.als.AlternatingLeastSquares` (Hu et al.'s confidence weighting,
  pip install -e ".[peers]") at 192 factors over a grid of (α, λ), its factors evaluated by
  this project's evaluators (sampled, corrected, full ranking). Its fit time and ours are
  measured in the same process, alternating, with the same number of sweeps.
- Ensembles: per-user z-normalised scores (over all items) of the chosen EASE, iALS (and
  MF-192 runs when `--mf_workdirs` lists them), weights on a grid chosen on validation.
- Each figure has a 95% bootstrap interval over users (ncf_jax/statistics.py); the best
  validation-selected model gets a paired bootstrap against the others.

Results: `experiments/results/baselines.md`, `baselines.json`, summary.json's `baselines`.
"""

import dataclasses
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ncf_jax import evaluation
from ncf_jax import models
from ncf_jax import run_settings
from ncf_jax import statistics
from ncf_jax import trained_run
from ncf_jax.data import registry
from ncf_jax.data.files import atomic_write_text
from ncf_jax.dot_product import IALS
from ncf_jax.ials import Pairs, Settings, sweep

EASE_GRID = (200.0, 500.0, 1000.0)
# (α0, λ) with ν = 1 (frequency-scaled λ), as Rendle et al. tune them. The CPU is shared, so
# the grids are small: three points each, around the best of a validation-only scan.
IALS_GRID = ((0.01, 0.003), (0.03, 0.003), (0.1, 0.001), (0.3, 0.007))
IMPLICIT_GRID = ((3.0, 10.0), (10.0, 10.0), (3.0, 30.0))  # (α, λ)
IMPLICIT_ITERATIONS = 16
# A seconds-long smoke run of the whole experiment (tests, --baselines_grid=smoke).
SMOKE_GRIDS = dict(ease=(10.0, 50.0), ials=((0.1, 0.01), (0.3, 0.01)),
                   implicit=((1.0, 0.1), (10.0, 1.0)), factors=16)
FULL_GRIDS = dict(ease=EASE_GRID, ials=IALS_GRID, implicit=IMPLICIT_GRID, factors=192)


@dataclasses.dataclass
class Evaluated:
  """One model's per-user results on the same users as every other's."""
  name: str
  valid_ranks: np.ndarray
  test_ranks: np.ndarray
  full_ranks: np.ndarray
  scores: np.ndarray | None = None  # (users, items) z-normalised, for ensembles
  info: dict = dataclasses.field(default_factory=dict)


def figures(e: Evaluated, num_items: int, num_negatives: int, top_k: int = 10) -> dict:
  """HR/NDCG with bootstrap intervals, the corrected HR, full ranking, validation HR."""
  test = evaluation.summarize(e.test_ranks, top_k)
  full = evaluation.summarize(e.full_ranks, top_k)
  valid = evaluation.summarize(e.valid_ranks, top_k)
  return dict(model=e.name, hr=test['hr'], ndcg=test['ndcg'],
              **statistics.interval_fields(e.test_ranks, top_k),
              full_hr=full['hr'], full_ndcg=full['ndcg'],
              corrected_hr=statistics.corrected_hr(e.test_ranks, num_negatives, num_items - 1,
                                                   top_k),
              valid_hr=valid['hr'], valid_ndcg=valid['ndcg'], **e.info)


def score_matrix(model, params, num_users: int, num_items: int, block: int = 512) -> np.ndarray:
  """(users, items) float32 scores of a dot-product-like model, in blocks of users."""
  apply = jax.jit(lambda p, u: model.apply({'params': p}, u, jnp.arange(num_items),
                                           method=model.score_matrix))
  out = np.empty((num_users, num_items), np.float32)
  for start in range(0, num_users, block):
    users = np.arange(start, min(start + block, num_users))
    padded = np.concatenate([users, np.zeros(block - len(users), users.dtype)])
    out[users] = np.asarray(apply(params, jnp.asarray(padded)))[:len(users)]
  return out


def znormalise(scores: np.ndarray) -> np.ndarray:
  """Each user's scores over all items to mean 0, std 1 (so models' scales are comparable)."""
  mean = scores.mean(axis=1, keepdims=True)
  std = scores.std(axis=1, keepdims=True)
  return (scores - mean) / np.where(std > 0, std, 1.0)


class Ranker:
  """The evaluators' rank rule applied to a (users, items) score matrix in NumPy: sampled
  (validation, test) and full ranking of the test item excluding known items."""

  def __init__(self, dataset):
    self.dataset = dataset
    known = dataset.train_matrix.toarray().astype(bool)
    if dataset.valid is not None:
      known[dataset.valid.users, dataset.valid.items] = True
    self.known = known

  def sampled(self, scores: np.ndarray, heldout) -> np.ndarray:
    counted = heldout.negatives != heldout.items[:, None]
    return evaluation.ranks_from_scores(scores[heldout.users, heldout.items],
                                        scores[heldout.users[:, None], heldout.negatives], counted)

  def full(self, scores: np.ndarray) -> np.ndarray:
    test = self.dataset.test
    rows = scores[test.users]
    counted = ~self.known[test.users]
    counted[np.arange(len(test.users)), test.items] = False
    return evaluation.ranks_from_scores(rows[np.arange(len(test.users)), test.items], rows,
                                        counted)

  def evaluate(self, name: str, scores: np.ndarray, info=None, keep_scores=True) -> Evaluated:
    if not np.all(np.isfinite(scores)):
      raise ValueError(f'{name}: non-finite scores')
    return Evaluated(name, self.sampled(scores, self.dataset.valid),
                     self.sampled(scores, self.dataset.test), self.full(scores),
                     znormalise(scores) if keep_scores else None, dict(info or {}))


def evaluate_workdir(workdir: str, dataset, ranker: Ranker, name: str) -> Evaluated:
  """A trained run's best (validation-selected) checkpoint through the project's evaluators;
  its score matrix kept for ensembles."""
  trained = trained_run.load_best(workdir, dataset.num_users, dataset.num_items)
  top_k = trained.config.top_k
  valid = evaluation.SampledEvaluator(trained.model, dataset.valid, 256, what='validation')
  test = evaluation.SampledEvaluator(trained.model, dataset.test, 256)
  full = evaluation.full_ranking_evaluator(trained.model, dataset)
  scores = score_matrix(trained.model, trained.params, dataset.num_users, dataset.num_items)
  out = Evaluated(name, valid.user_ranks(trained.params), test.user_ranks(trained.params),
                  full.user_ranks(trained.params), znormalise(scores),
                  dict(best_epoch=int(trained.epoch), workdir=workdir))
  # The NumPy ranker must agree with the evaluators (same rule): a check on every model.
  assert np.array_equal(ranker.sampled(scores, dataset.test), out.test_ranks) or \
      abs(evaluation.summarize(ranker.sampled(scores, dataset.test), top_k)['hr']
          - evaluation.summarize(out.test_ranks, top_k)['hr']) < 1e-3, name
  return out


def fit_implicit(dataset, alpha: float, regularization: float, factors: int, seed: int,
                 iterations: int = IMPLICIT_ITERATIONS):
  """implicit's CPU ALS on the training matrix: (user factors, item factors, fit seconds)."""
  from implicit.cpu.als import AlternatingLeastSquares  # pylint: disable=g-import-not-at-top
  model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                  iterations=iterations, random_state=seed,
                                  calculate_training_loss=False)
  matrix = dataset.train_matrix.tocsr().astype(np.float32)
  t0 = time.perf_counter()
  model.fit(matrix, show_progress=False)
  seconds = time.perf_counter() - t0
  return np.asarray(model.user_factors), np.asarray(model.item_factors), seconds


def implicit_scores(user_factors, item_factors) -> np.ndarray:
  return (user_factors @ item_factors.T).astype(np.float32)


def time_ours(dataset, config, sweeps: int, seed: int) -> float:
  """Seconds for `sweeps` iALS sweeps of this project (compiled beforehand, as implicit's
  are: its kernels are compiled C++)."""
  settings = Settings(float(config.unobserved_weight), float(config.regularization),
                      float(config.regularization_exponent), int(config.cg_steps))
  by_user = Pairs.build(dataset.train_users, dataset.train_items, dataset.num_users,
                        settings.block, dataset.num_items)
  by_item = Pairs.build(dataset.train_items, dataset.train_users, dataset.num_items,
                        settings.block, dataset.num_users)
  model = IALS(dataset.num_users, dataset.num_items, int(config.num_factors),
               embedding_stddev=float(config.embedding_stddev))
  params = models.init_params(model, seed)
  w, h = params['user_embedding'], params['item_embedding']
  jax.block_until_ready(sweep(by_user, by_item, w, h, settings))  # compile
  t0 = time.perf_counter()
  for _ in range(sweeps):
    w, h, _ = sweep(by_user, by_item, w, h, settings)
  jax.block_until_ready((w, h))
  return time.perf_counter() - t0


def ensemble_search(members: list[Evaluated], ranker: Ranker, step: float = 0.1) -> Evaluated:
  """Weights on a simplex grid chosen on validation HR@10 (ties: the first found); the
  ensemble's score is the weighted sum of the members' z-normalised scores."""
  n = len(members)
  grid = [w for w in itertools.product(np.arange(0, 1 + 1e-9, step), repeat=n - 1)
          if sum(w) <= 1 + 1e-9]
  best = None
  for partial in grid:
    weights = (*partial, 1 - sum(partial))
    if sum(w > 0 for w in weights) < 2:
      continue
    scores = sum(w * m.scores for w, m in zip(weights, members) if w > 0)
    valid_hr = float(np.mean(ranker.sampled(scores, ranker.dataset.valid) < 10))
    if best is None or valid_hr > best[0]:
      best = (valid_hr, weights)
  weights = best[1]
  scores = sum(w * m.scores for w, m in zip(weights, members) if w > 0)
  name = 'ensemble(' + ', '.join(f'{w:.1f}·{m.name}' for w, m in zip(weights, members)) + ')'
  return ranker.evaluate(name, scores, dict(weights=[float(w) for w in weights],
                                            members=[m.name for m in members]),
                         keep_scores=False)


def seed_interval(values: list[float]) -> dict:
  """Mean and the 95% t-interval over seeds (n >= 2)."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) < 2:
    return dict(mean=mean, ci95=None, n=len(values))
  half = float(scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1)
               / np.sqrt(len(values)))
  return dict(mean=mean, ci95=(mean - half, mean + half), std=float(values.std(ddof=1)),
              n=len(values))


def paired(a: Evaluated, b: Evaluated) -> dict:
  """A beats B? Paired bootstrap over users of HR@10 and NDCG@10 (10,000 resamples)."""
  ua, ub = statistics.per_user_metrics(a.test_ranks, 10), statistics.per_user_metrics(
      b.test_ranks, 10)
  return dict(a=a.name, b=b.name, hr=statistics.paired_bootstrap(ua['hit'], ub['hit']),
              ndcg=statistics.paired_bootstrap(ua['ndcg'], ub['ndcg']))


def write_json(path: str, value) -> None:
  atomic_write_text(path, json.dumps(value, indent=1, default=_json_default) + '\n')


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(type(value))


def load_dataset(data_dir: str | None, dataset_name: str, synthetic_users=None):
  config = __import__('ncf_jax.configs.default', fromlist=['get_config']).get_config()
  config.dataset, config.validation = dataset_name, True
  if synthetic_users:
    config.synthetic.num_users = synthetic_users
  if data_dir:
    config.data_dir = os.path.abspath(data_dir)
  return registry.load_dataset(run_settings.data_settings(config))


def _select(rows: list[dict]) -> dict:
  """The row with the best validation HR@10 (the first of equals)."""
  return max(rows, key=lambda r: r['valid_hr'])


def run(flags_values, reproduce) -> dict:
  """Trains (or resumes) the grids, the peer and the ensembles; writes the results."""
  data_dir, top_k = flags_values.data_dir, 10
  dataset = load_dataset(data_dir, flags_values.dataset, flags_values.synthetic_users)
  ranker = Ranker(dataset)
  num_negatives = dataset.test.negatives.shape[1]
  root = os.path.join(os.path.abspath(flags_values.runs_dir), 'baselines')
  common = dict(dataset=flags_values.dataset, validation=True, full_ranking=False,
                log_every_seconds=0.0)
  if flags_values.synthetic_users:
    common['synthetic_users'] = flags_values.synthetic_users
  if data_dir:
    common['data_dir'] = os.path.abspath(data_dir)
  seeds = [int(s) for s in flags_values.seeds]
  grids = SMOKE_GRIDS if flags_values.baselines_grid == 'smoke' else FULL_GRIDS
  factors = grids['factors']
  ials_common = dict(common, num_factors=factors)
  if flags_values.num_epochs is not None:
    ials_common['num_epochs'] = flags_values.num_epochs
  fig = lambda e: figures(e, dataset.num_items, num_negatives, top_k)
  out = dict(grids={}, seeds={}, paired=[], timing={})

  # EASE: λ on validation; deterministic, so one run per λ.
  ease_runs = [reproduce.Run(f'ease-{lam:g}', 'ease', dict(common, regularization=lam),
                             os.path.join(root, f'ease-{lam:g}')) for lam in grids['ease']]
  ease_rows, ease_eval = [], {}
  for r in ease_runs:
    reproduce.execute(r)
    e = evaluate_workdir(r.workdir, dataset, ranker, 'EASE')
    ease_eval[r.name] = e
    ease_rows.append(dict(fig(e), regularization=r.overrides['regularization'],
                          command=r.command()))
  out['grids']['ease'] = ease_rows
  ease_best = _select(ease_rows)
  ease = ease_eval[f"ease-{ease_best['regularization']:g}"]

  # iALS: (α0, λ) on validation at seed 0, then the chosen setting at every seed.
  ials_rows, ials_eval = [], {}
  for a0, lam in grids['ials']:
    r = reproduce.Run(f'ials-a{a0:g}-l{lam:g}', 'ials',
                      dict(ials_common, unobserved_weight=a0, regularization=lam, seed=seeds[0]),
                      os.path.join(root, f'ials-a{a0:g}-l{lam:g}'))
    reproduce.execute(r)
    e = evaluate_workdir(r.workdir, dataset, ranker, f'iALS-{factors}')
    ials_eval[(a0, lam)] = e
    ials_rows.append(dict(fig(e), unobserved_weight=a0, regularization=lam, seed=seeds[0],
                          command=r.command()))
  out['grids']['ials'] = ials_rows
  ials_best = _select(ials_rows)
  chosen = (ials_best['unobserved_weight'], ials_best['regularization'])
  ials_seed_rows, ials_seeds = [ials_best], [ials_eval[chosen]]
  for seed in seeds[1:]:
    r = reproduce.Run(f'ials-a{chosen[0]:g}-l{chosen[1]:g}-seed{seed}', 'ials',
                      dict(ials_common, unobserved_weight=chosen[0],
                           regularization=chosen[1], seed=seed),
                      os.path.join(root, f'ials-a{chosen[0]:g}-l{chosen[1]:g}-seed{seed}'))
    reproduce.execute(r)
    e = evaluate_workdir(r.workdir, dataset, ranker, f'iALS-{factors}')
    ials_seeds.append(e)
    ials_seed_rows.append(dict(fig(e), unobserved_weight=chosen[0], regularization=chosen[1],
                               seed=seed, command=r.command()))
  out['seeds']['ials'] = dict(
      runs=ials_seed_rows,
      **{m: seed_interval([row[m] for row in ials_seed_rows])
         for m in ('hr', 'ndcg', 'full_hr', 'full_ndcg')})
  ials = ials_eval[chosen]

  # The peer: implicit's ALS, (α, λ) on validation at seed 0.
  implicit_rows, implicit_eval = [], {}
  try:
    import implicit  # pylint: disable=g-import-not-at-top,unused-import
    have_implicit = True
  except ImportError:
    have_implicit = False
    print('implicit is not installed (pip install -e ".[peers]"): no peer row', flush=True)
  if have_implicit:
    for alpha, lam in grids['implicit']:
      w, h, seconds = fit_implicit(dataset, alpha, lam, factors, seeds[0])
      e = ranker.evaluate('implicit-als', implicit_scores(w, h))
      implicit_eval[(alpha, lam)] = e
      implicit_rows.append(dict(fig(e), alpha=alpha, regularization=lam, seed=seeds[0],
                                iterations=IMPLICIT_ITERATIONS, fit_seconds=seconds))
      print(f"[implicit-als a={alpha:g} l={lam:g}] valid HR {implicit_rows[-1]['valid_hr']:.4f}"
            f" test HR {implicit_rows[-1]['hr']:.4f} fit {seconds:.1f}s", flush=True)
    out['grids']['implicit-als'] = implicit_rows
    peer_best = _select(implicit_rows)
    peer = implicit_eval[(peer_best['alpha'], peer_best['regularization'])]
    # Fit time, same process, alternating order, the same number of sweeps.
    ials_config = reproduce.Run('t', 'ials', dict(ials_common, unobserved_weight=chosen[0],
                                                  regularization=chosen[1]), '').config()
    ours, theirs = [], []
    for order in range(2):
      for who in ((0, 1) if order == 0 else (1, 0)):
        if who == 0:
          ours.append(time_ours(dataset, ials_config, IMPLICIT_ITERATIONS, seeds[0]))
        else:
          theirs.append(fit_implicit(dataset, peer_best['alpha'], peer_best['regularization'],
                                     factors, seeds[0])[2])
    out['timing'] = dict(sweeps=IMPLICIT_ITERATIONS, ours_seconds=ours, implicit_seconds=theirs,
                         ratio_ours_over_implicit=float(np.median(ours) / np.median(theirs)),
                         ours_cg_steps=int(ials_config.cg_steps),
                         note='one process, alternating order, shared 2-core CPU')

  # Ensembles of the chosen models (and MF runs when given), weights on validation.
  members = [ease, ials]
  for path in flags_values.mf_workdirs or []:
    members.append(evaluate_workdir(os.path.abspath(path), dataset, ranker,
                                    f'MF-192 ({os.path.basename(path.rstrip("/"))})'))
  ensembles = [ensemble_search(members, ranker)]
  if len(members) > 2:
    ensembles.append(ensemble_search(members[:2], ranker))
  candidates = [ease, ials, *members[2:], *ensembles]
  rows = {id(e): fig(e) for e in candidates}
  best = max(candidates, key=lambda e: rows[id(e)]['valid_hr'])
  for other in candidates + ([peer] if have_implicit else []):
    if other is not best:
      out['paired'].append(paired(best, other))
  if have_implicit:
    out['paired'].append(paired(ials, peer))

  command = (f'python -m experiments.reproduce --experiment=baselines --data_dir={data_dir}'
             + (f' --seeds={",".join(flags_values.seeds)}' if seeds != [0, 1, 2] else ''))
  entries = []

  def entry(e, selection, seeds_used, how, extra=None):
    row = rows.get(id(e)) or fig(e)
    entries.append(dict(model=e.name, hr=row['hr'], ndcg=row['ndcg'], hr_ci95=row['hr_ci95'],
                        ndcg_ci95=row['ndcg_ci95'], full_hr=row['full_hr'],
                        full_ndcg=row['full_ndcg'], corrected_hr=row['corrected_hr'],
                        valid_hr=row['valid_hr'], selection=selection, seeds=seeds_used,
                        command=how, **(extra or {})))

  entry(ease, f"λ={ease_best['regularization']:g} of {list(grids['ease'])} on validation HR@10",
        'deterministic (closed form; no seed)', ease_best['command'])
  entry(ials, f'(α0, λ)={chosen} of {list(grids["ials"])} on validation HR@10; epoch on '
        'validation', seeds[:1], ials_best['command'],
        dict(seed_mean=out['seeds']['ials']))
  if have_implicit:
    entry(peer, f"(α, λ)=({peer_best['alpha']:g}, {peer_best['regularization']:g}) of "
          f'{list(grids["implicit"])} on validation HR@10; {IMPLICIT_ITERATIONS} iterations',
          seeds[:1], command, dict(fit_seconds=out['timing']))
  for e in members[2:]:
    entry(e, 'epoch on validation', 'one run', e.info.get('workdir', ''))
  for e in ensembles:
    entry(e, 'weights on validation HR@10 (grid step 0.1)', 'the members\' runs', command,
          dict(weights=e.info['weights'], members=e.info['members']))
  out['baselines'] = entries
  out['best'] = dict(model=best.name, **{k: rows[id(best)][k] for k in (
      'hr', 'ndcg', 'hr_ci95', 'ndcg_ci95', 'full_hr', 'full_ndcg', 'corrected_hr',
      'valid_hr')})
  out['command'] = command
  return out


def _ci(pair) -> str:
  return f'[{pair[0]:.4f}, {pair[1]:.4f}]'


def markdown(out: dict) -> str:
  """baselines.md: the chosen models with intervals, the grids, seeds, timing, paired tests."""
  lines = ['# Baselines (ML-1M, validation-selected)\n',
           f"Made by `{out['command']}`. Every setting and epoch is chosen on the validation "
           'holdout (HR@10); test is read at the choice. Intervals: 95% bootstrap over users '
           '(1,000 resamples, seed 0). corrected HR@10: Krichene & Rendle (2020)\'s BV '
           'estimator (γ = 0.1, uniform prior) from the sampled ranks. full: ranking against '
           'every item the user has not interacted with.\n',
           '| model | HR@10 [95% CI] | NDCG@10 [95% CI] | corrected HR@10 | full HR@10 | '
           'full NDCG@10 | valid HR@10 | selection | seeds |', '|---|---|---|---|---|---|---|---|---|']
  for e in out['baselines']:
    lines.append(f"| {e['model']} | {e['hr']:.4f} {_ci(e['hr_ci95'])} | {e['ndcg']:.4f} "
                 f"{_ci(e['ndcg_ci95'])} | {e['corrected_hr']:.4f} | {e['full_hr']:.4f} | "
                 f"{e['full_ndcg']:.4f} | {e['valid_hr']:.4f} | {e['selection']} | "
                 f"{e['seeds']} |")
  s = out['seeds'].get('ials')
  if s:
    lines += ['', '## iALS over seeds (the chosen setting)', '']
    for m in ('hr', 'ndcg', 'full_hr', 'full_ndcg'):
      ci = s[m]['ci95']
      lines.append(f"- {m}: mean {s[m]['mean']:.4f}"
                   + (f", 95% t-interval {_ci(ci)} over {s[m]['n']} seeds" if ci else ''))
  if out.get('timing'):
    t = out['timing']
    lines += ['', '## Fit time beside implicit', '',
              f"{t['sweeps']} sweeps each, {t['note']}: ours (CG, {t['ours_cg_steps']} steps "
              f"per side) {', '.join(f'{x:.1f}' for x in t['ours_seconds'])} s; implicit "
              f"{', '.join(f'{x:.1f}' for x in t['implicit_seconds'])} s; median ratio "
              f"ours/implicit {t['ratio_ours_over_implicit']:.2f}."]
  lines += ['', '## Paired bootstrap over users (10,000 resamples; p: one-sided, A does not '
            'beat B)', '', '| A | B | ΔHR@10 [95% CI] | p | ΔNDCG@10 [95% CI] | p |',
            '|---|---|---|---|---|---|']
  for p in out['paired']:
    lines.append(f"| {p['a']} | {p['b']} | {p['hr']['difference']:+.4f} {_ci(p['hr']['ci95'])} "
                 f"| {p['hr']['p_value']:.4f} | {p['ndcg']['difference']:+.4f} "
                 f"{_ci(p['ndcg']['ci95'])} | {p['ndcg']['p_value']:.4f} |")
  for name, grid in out['grids'].items():
    keys = [k for k in ('regularization', 'unobserved_weight', 'alpha', 'fit_seconds')
            if k in grid[0]]
    lines += ['', f'## Grid: {name}', '',
              '| ' + ' | '.join(keys) + ' | valid HR@10 | HR@10 | NDCG@10 | full HR@10 |',
              '|' + '---|' * (len(keys) + 4)]
    for row in grid:
      lines.append('| ' + ' | '.join(f'{row[k]:g}' for k in keys)
                   + f" | {row['valid_hr']:.4f} | {row['hr']:.4f} | {row['ndcg']:.4f} | "
                   f"{row['full_hr']:.4f} |")
  return '\n'.join(lines) + '\n'


def wald_hr_interval(hr: float, num_users: int) -> tuple[float, float]:
  """The normal-approximation 95% interval of a mean of per-user hits (for stored entries
  whose runs, hence per-user data, are not at hand: HR only, NDCG needs the ranks)."""
  half = 1.96 * np.sqrt(hr * (1 - hr) / num_users)
  return (float(hr - half), float(hr + half))


WALD_NOTE = ('95% normal-approximation (Wald) interval of HR@10 over 6,040 users from the '
             'stored HR alone: these runs are not on the machine that made the baselines, so '
             'their per-user ranks (needed for bootstrap intervals and NDCG intervals) were '
             'not recomputed; `python -m experiments.reproduce --experiment=baselines '
             '--mf_workdirs=...` with the runs present adds bootstrap intervals for MF-192.')


def add_wald_intervals(summary: dict, num_users: int = 6040) -> dict:
  """`hr_ci95_wald` on summary.json's table2 and best entries (and the best's single runs)."""
  for row in summary.get('table2', []):
    row['hr_ci95_wald'] = wald_hr_interval(row['hr'], num_users)
    row['ci_note'] = WALD_NOTE
  best = summary.get('best')
  if best:
    best['hr_ci95_wald'] = wald_hr_interval(best['hr'], num_users)
    best['ci_note'] = WALD_NOTE
    for run in best.get('single_runs', []):
      run['hr_ci95_wald'] = wald_hr_interval(run['hr'], num_users)
  return summary
