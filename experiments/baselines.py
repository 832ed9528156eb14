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

from experiments import stream
from ncf_jax import evaluation
from ncf_jax import models
from ncf_jax import run_settings
from ncf_jax import statistics
from ncf_jax import trained_run
from ncf_jax.data import registry
from ncf_jax.data.files import atomic_write_text
from ncf_jax.dot_product import IALS
from ncf_jax.ials import Pairs, Settings, sweep

# Every model's hyperparameters are chosen by one rule (`lattice_search`): its initial grid,
# then, while the validation-best point has an unevaluated lattice neighbour (one value
# multiplied or divided by that hyperparameter's step), the neighbours are run and the best
# re-chosen; the search ends with the chosen point better than all its neighbours (interior)
# or at the budget. EASE's λ steps by 2, the ALS models' (α, λ) by 3 (ours and the peer's).
EASE_GRID = ((200.0,), (500.0,), (1000.0,))
EASE_STEPS = (2.0,)
# (α0, λ) with ν = 1 (frequency-scaled λ), as Rendle et al. tune them. (0.3, 0.007) is the
# peer's first-grid best (α 3, λ 30) mapped to this form:
# α0 ≈ 1/α, λ ≈ λ_implicit / (α·(|I_u| + α0·|I|)).
IALS_GRID = ((0.01, 0.003), (0.03, 0.003), (0.1, 0.001), (0.3, 0.007))
IMPLICIT_GRID = ((3.0, 10.0), (10.0, 10.0), (3.0, 30.0))  # (α, λ)
ALS_STEPS = (3.0, 3.0)
SEARCH_BUDGET = 12  # new points per model beyond the initial grid
IMPLICIT_ITERATIONS = 16
DEFAULT_SEEDS = tuple(range(8))  # Rendle et al. average 8 runs
# A seconds-long smoke run of the whole experiment (tests, --baselines_grid=smoke).
SMOKE_GRIDS = dict(ease=((10.0,), (50.0,)), ials=((0.1, 0.01), (0.3, 0.01)),
                   implicit=((1.0, 0.1), (10.0, 1.0)), factors=16, budget=2)
FULL_GRIDS = dict(ease=EASE_GRID, ials=IALS_GRID, implicit=IMPLICIT_GRID, factors=192,
                  budget=SEARCH_BUDGET)


def _round(value: float) -> float:
  """Two significant digits: lattice points have short names (0.3 * 3 -> 0.9, not 0.8999...)."""
  return float(f'{value:.2g}')


def neighbours(point: tuple, steps: tuple) -> list[tuple]:
  """The lattice neighbours of `point`: each coordinate divided, then multiplied, by its step."""
  out = []
  for i, step in enumerate(steps):
    for factor in (1.0 / step, step):
      out.append(tuple(_round(v * factor) if j == i else v for j, v in enumerate(point)))
  return out


def lattice_search(initial, steps, valid_hr, budget: int) -> dict:
  """The selection rule of every model here: evaluate `initial`, then the unevaluated
  neighbours of the validation-best point until it has none (or `budget` new points ran).

  `valid_hr(point)` trains/evaluates a point and returns its validation HR@10. Returns
  the chosen point, the points in evaluation order and whether the chosen one is interior
  (every neighbour evaluated, none better; ties keep the first evaluated).
  """
  scores, order = {}, []

  def run(point):
    point = tuple(float(v) for v in point)
    if point not in scores:
      scores[point] = valid_hr(point)
      order.append(point)

  for point in initial:
    run(point)
  new = 0
  while True:
    best = max(order, key=lambda p: scores[p])  # max keeps the first of equals
    missing = [p for p in neighbours(best, steps) if p not in scores]
    if not missing or new >= budget:
      return dict(chosen=best, order=order, interior=not missing)
    run(missing[0])
    new += 1


@dataclasses.dataclass
class Evaluated:
  """One model's per-user results on the same users as every other's."""
  name: str
  valid_ranks: np.ndarray
  test_ranks: np.ndarray
  full_ranks: np.ndarray
  scores: np.ndarray | None = None  # (users, items) z-normalised, for ensembles
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def valid_hr10(self) -> float:
    return float(np.mean(self.valid_ranks < 10))


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


def ensemble_with(weights, members: list[Evaluated], ranker: Ranker) -> Evaluated:
  """The ensemble of `members` at fixed `weights` (no search)."""
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


def load_dataset(data_dir: str | None, dataset_name: str, synthetic_users=None, seed: int = 0):
  """The split a run with `seed` trains on: the seed breaks the validation holdout's ties and
  draws its negatives (test and train ∪ validation are the same for every seed)."""
  config = __import__('ncf_jax.configs.default', fromlist=['get_config']).get_config()
  config.dataset, config.validation, config.seed = dataset_name, True, seed
  if synthetic_users:
    config.synthetic.num_users = synthetic_users
  if data_dir:
    config.data_dir = os.path.abspath(data_dir)
  return registry.load_dataset(run_settings.data_settings(config))


def _select(rows: list[dict]) -> dict:
  """The row with the best validation HR@10 (the first of equals)."""
  return max(rows, key=lambda r: r['valid_hr'])


def _given_seeds(flags_values) -> list[int]:
  """--seeds when given on the command line, else DEFAULT_SEEDS (8, as Rendle et al.)."""
  try:
    present = bool(flags_values['seeds'].present)
  except (TypeError, KeyError):
    present = True
  return [int(s) for s in flags_values.seeds] if present else list(DEFAULT_SEEDS)


def _keep_scores_of(chosen: Evaluated, evaluated) -> None:
  """Drops the (users, items) score matrices of all but `chosen` (memory: ~90 MB each)."""
  for e in evaluated:
    if e is not chosen:
      e.scores = None


def _seed_stats(rows: list[dict]) -> dict:
  return {m: seed_interval([row[m] for row in rows])
          for m in ('hr', 'ndcg', 'full_hr', 'full_ndcg', 'valid_hr')
          if all(row.get(m) is not None for row in rows)}


def _test_only(row: dict, **extra) -> dict:
  """A per-seed ensemble's figures without validation ones (see `run`)."""
  return dict({k: v for k, v in row.items() if not k.startswith('valid_')}, **extra)


def _lattice_note(search: dict, names: tuple[str, ...], steps: tuple) -> str:
  chosen = ', '.join(f'{n}={v:g}' for n, v in zip(names, search['chosen']))
  where = ('interior: every neighbour (x/÷ ' + ', '.join(f'{s:g}' for s in steps)
           + ') evaluated and no better' if search['interior']
           else 'NOT interior: the search budget ran out')
  return (f'{chosen}, chosen on validation HR@10 by the lattice search over '
          f'{len(search["order"])} points ({where})')


def run(flags_values, reproduce) -> dict:
  """Trains (or resumes) the searches, the seeds, the peer and the ensembles."""
  data_dir, top_k = flags_values.data_dir, 10
  seeds = _given_seeds(flags_values)
  dataset = load_dataset(data_dir, flags_values.dataset, flags_values.synthetic_users, seeds[0])
  ranker = Ranker(dataset)

  def split_for(seed: int):
    """(dataset, ranker) of the split a run with `seed` trained on: its validation figures
    must come from its own holdout (another seed's validation items may be in its training)."""
    if seed == seeds[0]:
      return dataset, ranker
    other = load_dataset(data_dir, flags_values.dataset, flags_values.synthetic_users, seed)
    return other, Ranker(other)

  num_negatives = dataset.test.negatives.shape[1]
  root = os.path.join(os.path.abspath(flags_values.runs_dir), 'baselines')
  common = dict(dataset=flags_values.dataset, validation=True, full_ranking=False,
                log_every_seconds=0.0)
  if flags_values.synthetic_users:
    common['synthetic_users'] = flags_values.synthetic_users
  if data_dir:
    common['data_dir'] = os.path.abspath(data_dir)
  grids = SMOKE_GRIDS if flags_values.baselines_grid == 'smoke' else FULL_GRIDS
  factors, budget = grids['factors'], grids['budget']
  ials_common = dict(common, num_factors=factors)
  if flags_values.num_epochs is not None:
    ials_common['num_epochs'] = flags_values.num_epochs
  fig = lambda e: figures(e, dataset.num_items, num_negatives, top_k)
  out = dict(grids={}, searches={}, seeds={}, paired=[], timing={})

  # EASE: λ by the lattice search on validation; deterministic, so one run per λ.
  ease_rows, ease_eval = [], {}

  def ease_point(point):
    lam = point[0]
    r = reproduce.Run(f'ease-{lam:g}', 'ease', dict(common, regularization=lam),
                      os.path.join(root, f'ease-{lam:g}'))
    reproduce.execute(r)
    e = evaluate_workdir(r.workdir, dataset, ranker, 'EASE')
    ease_eval[point] = e
    ease_rows.append(dict(fig(e), regularization=lam, command=r.command()))
    _keep_scores_of(ease_eval[max(ease_eval, key=lambda p: ease_eval[p].valid_hr10)],
                    ease_eval.values())
    print(f'[EASE λ={lam:g}] valid HR {ease_rows[-1]["valid_hr"]:.4f}', flush=True)
    return ease_rows[-1]['valid_hr']

  ease_search = lattice_search(grids['ease'], EASE_STEPS, ease_point, budget)
  out['grids']['ease'] = ease_rows
  out['searches']['ease'] = ease_search
  ease = ease_eval[ease_search['chosen']]
  ease_best = next(r for r in ease_rows if (r['regularization'],) == ease_search['chosen'])

  # iALS: (α0, λ) by the lattice search on validation at the first seed, then every seed.
  def ials_run(a0, lam, seed):
    suffix = '' if seed == seeds[0] else f'-seed{seed}'
    return reproduce.Run(f'ials-a{a0:g}-l{lam:g}{suffix}', 'ials',
                         dict(ials_common, unobserved_weight=a0, regularization=lam, seed=seed),
                         os.path.join(root, f'ials-a{a0:g}-l{lam:g}{suffix}'))

  ials_rows, ials_eval = [], {}

  def ials_point(point):
    a0, lam = point
    r = ials_run(a0, lam, seeds[0])
    reproduce.execute(r)
    e = evaluate_workdir(r.workdir, dataset, ranker, f'iALS-{factors}')
    ials_eval[point] = e
    ials_rows.append(dict(fig(e), unobserved_weight=a0, regularization=lam, seed=seeds[0],
                          command=r.command()))
    _keep_scores_of(ials_eval[max(ials_eval, key=lambda p: ials_eval[p].valid_hr10)],
                    ials_eval.values())
    print(f'[iALS α0={a0:g} λ={lam:g}] valid HR {ials_rows[-1]["valid_hr"]:.4f}', flush=True)
    return ials_rows[-1]['valid_hr']

  ials_search = lattice_search(grids['ials'], ALS_STEPS, ials_point, budget)
  out['grids']['ials'] = ials_rows
  out['searches']['ials'] = ials_search
  chosen = ials_search['chosen']
  ials = ials_eval[chosen]
  ials_best = next(r for r in ials_rows
                   if (r['unobserved_weight'], r['regularization']) == chosen)

  # The peer: implicit's ALS, (α, λ) by the same search at the first seed, then every seed.
  implicit_rows, implicit_eval = [], {}
  try:
    import implicit  # pylint: disable=g-import-not-at-top,unused-import
    have_implicit = True
  except ImportError:
    have_implicit = False
    print('implicit is not installed (pip install -e ".[peers]"): no peer row', flush=True)
  peer = peer_best = None
  if have_implicit:
    def implicit_point(point, seed=seeds[0]):
      alpha, lam = point
      split, split_ranker = split_for(seed)
      w, h, seconds = fit_implicit(split, alpha, lam, factors, seed)
      e = split_ranker.evaluate('implicit-als', implicit_scores(w, h))
      row = dict(fig(e), alpha=alpha, regularization=lam, seed=seed,
                 iterations=IMPLICIT_ITERATIONS, fit_seconds=seconds)
      print(f'[implicit-als α={alpha:g} λ={lam:g} seed {seed}] valid HR {row["valid_hr"]:.4f}'
            f' fit {seconds:.1f}s', flush=True)
      return e, row

    def implicit_search_point(point):
      e, row = implicit_point(point)
      implicit_eval[point] = e
      implicit_rows.append(row)
      _keep_scores_of(None, implicit_eval.values())  # the peer is in no ensemble
      return row['valid_hr']

    peer_search = lattice_search(grids['implicit'], ALS_STEPS, implicit_search_point, budget)
    out['grids']['implicit-als'] = implicit_rows
    out['searches']['implicit-als'] = peer_search
    peer = implicit_eval[peer_search['chosen']]
    peer_best = next(r for r in implicit_rows
                     if (r['alpha'], r['regularization']) == peer_search['chosen'])
    peer_seed_rows = [peer_best]
    for seed in seeds[1:]:
      peer_seed_rows.append(implicit_point(peer_search['chosen'], seed)[1])
    out['seeds']['implicit-als'] = dict(runs=peer_seed_rows, **_seed_stats(peer_seed_rows))
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
  member_sets = [members] + ([members[:2]] if len(members) > 2 else [])
  ensembles = [ensemble_search(m, ranker) for m in member_sets]
  candidates = [ease, ials, *members[2:], *ensembles]
  rows = {id(e): fig(e) for e in candidates}
  best = max(candidates, key=lambda e: rows[id(e)]['valid_hr'])

  # Every seed of the chosen iALS, each evaluated on its own split (validation included).
  # Each seed's ensembles keep the first seed's weights with that seed's iALS in place of
  # the first's: the other members (EASE: deterministic) were fit on the first seed's split,
  # whose training set holds some of another split's validation items, so no later
  # validation figure of an ensemble is clean, and none is used or reported.
  ials_seed_rows = [ials_best]
  ensemble_seed_rows = [[_test_only(fig(e), seed=seeds[0], weights=e.info['weights'])]
                        for e in ensembles]
  for seed in seeds[1:]:
    r = ials_run(chosen[0], chosen[1], seed)
    reproduce.execute(r)
    split, split_ranker = split_for(seed)
    e = evaluate_workdir(r.workdir, split, split_ranker, f'iALS-{factors}')
    ials_seed_rows.append(dict(fig(e), unobserved_weight=chosen[0], regularization=chosen[1],
                               seed=seed, command=r.command()))
    for i, (member_set, ens0) in enumerate(zip(member_sets, ensembles)):
      ens = ensemble_with(ens0.info['weights'], [member_set[0], e, *member_set[2:]], ranker)
      ensemble_seed_rows[i].append(_test_only(fig(ens), seed=seed, weights=ens.info['weights']))
    e.scores = None
  out['seeds']['ials'] = dict(runs=ials_seed_rows, **_seed_stats(ials_seed_rows))
  for ens, seed_rows in zip(ensembles, ensemble_seed_rows):
    out['seeds'][_ensemble_key(ens)] = dict(runs=seed_rows, **_seed_stats(seed_rows))
  if best is ials:
    best_seeds = out['seeds']['ials']
  elif best in ensembles:
    best_seeds = out['seeds'][_ensemble_key(best)]
  else:
    best_seeds = None  # EASE (deterministic) or an MF run (its seeds are its own runs)

  for other in candidates + ([peer] if peer is not None else []):
    if other is not best:
      out['paired'].append(paired(best, other))
  if peer is not None and best is not ials:
    out['paired'].append(paired(ials, peer))
  if peer is not None and best is not ease:
    out['paired'].append(paired(ease, peer))

  command = 'python -m experiments.reproduce --experiment=baselines' + (
      f' --data_dir={data_dir}' if data_dir else f' --dataset={flags_values.dataset}') + (
          f' --seeds={",".join(str(s) for s in seeds)}' if seeds != list(DEFAULT_SEEDS) else '')
  entries = []

  def entry(e, selection, seeds_used, how, extra=None):
    row = rows.get(id(e)) or fig(e)
    entries.append(dict(model=e.name, hr=row['hr'], ndcg=row['ndcg'], hr_ci95=row['hr_ci95'],
                        ndcg_ci95=row['ndcg_ci95'], full_hr=row['full_hr'],
                        full_ndcg=row['full_ndcg'], corrected_hr=row['corrected_hr'],
                        valid_hr=row['valid_hr'], selection=selection, seeds=seeds_used,
                        command=how, **(extra or {})))

  entry(ease, _lattice_note(ease_search, ('λ',), EASE_STEPS),
        'deterministic (closed form: no seed; one run per λ)', ease_best['command'])
  entry(ials, _lattice_note(ials_search, ('α0', 'λ'), ALS_STEPS) + '; epoch on validation',
        seeds[:1], ials_best['command'], dict(seed_stats=_brief(out['seeds']['ials'])))
  if peer is not None:
    entry(peer, _lattice_note(out['searches']['implicit-als'], ('α', 'λ'), ALS_STEPS)
          + f'; {IMPLICIT_ITERATIONS} iterations', seeds[:1], command,
          dict(fit_seconds=out['timing'], seed_stats=_brief(out['seeds']['implicit-als'])))
  for e in members[2:]:
    entry(e, 'epoch on validation', 'one run', e.info.get('workdir', ''))
  for e in ensembles:
    entry(e, 'weights on validation HR@10 (grid step 0.1)', seeds[:1], command,
          dict(weights=e.info['weights'], members=e.info['members'],
               seed_stats=_brief(out['seeds'][_ensemble_key(e)])))
  out['baselines'] = entries
  out['best'] = dict(model=best.name, **{k: rows[id(best)][k] for k in (
      'hr', 'ndcg', 'hr_ci95', 'ndcg_ci95', 'full_hr', 'full_ndcg', 'corrected_hr',
      'valid_hr')}, seed_stats=_brief(best_seeds) if best_seeds else
      'deterministic or a single run: no seeds')
  out['seeds_used'] = seeds
  out['command'] = command
  return out


def _ensemble_key(e: Evaluated) -> str:
  return 'ensemble(' + ', '.join(e.info['members']) + ')'


def _brief(stats: dict) -> dict:
  """The seed statistics without the per-run rows (those are in baselines.json)."""
  return {k: v for k, v in stats.items() if k != 'runs'}


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
           stream.stream_line() + ' EASE, iALS and `implicit` ALS draw no training examples '
           '(they fit the whole interaction matrix), so the stream enters only MF rows, which '
           '`--mf_workdirs` adds from runs that carry their own stream.\n',
           '| model | HR@10 [95% CI] | NDCG@10 [95% CI] | corrected HR@10 | full HR@10 | '
           'full NDCG@10 | valid HR@10 | selection | seeds |', '|---|---|---|---|---|---|---|---|---|']
  for e in out['baselines']:
    lines.append(f"| {e['model']} | {e['hr']:.4f} {_ci(e['hr_ci95'])} | {e['ndcg']:.4f} "
                 f"{_ci(e['ndcg_ci95'])} | {e['corrected_hr']:.4f} | {e['full_hr']:.4f} | "
                 f"{e['full_ndcg']:.4f} | {e['valid_hr']:.4f} | {e['selection']} | "
                 f"{e['seeds']} |")
  for name, s in out['seeds'].items():
    lines += ['', f"## {name} over seeds {', '.join(str(r['seed']) for r in s['runs'])} "
              '(the chosen setting; each seed on its own split, whose validation holdout the '
              'seed draws; ensembles: the first seed\'s weights)', '']
    for m in ('hr', 'ndcg', 'full_hr', 'full_ndcg'):
      ci = s[m]['ci95']
      lines.append(f"- {m}: mean {s[m]['mean']:.4f}"
                   + (f", 95% t-interval {_ci(ci)} over {s[m]['n']} seeds" if ci else '')
                   + ' (per seed: ' + ', '.join(f"{r[m]:.4f}" for r in s['runs']) + ')')
  best = out.get('best')
  if best:
    lines += ['', f"## Best (validation-selected): {best['model']}", '',
              f"test HR@10 {best['hr']:.4f} {_ci(best['hr_ci95'])}, NDCG@10 {best['ndcg']:.4f} "
              f"{_ci(best['ndcg_ci95'])} (first seed); over seeds: "
              + (f"HR@10 {best['seed_stats']['hr']['mean']:.4f} "
                 f"{_ci(best['seed_stats']['hr']['ci95'])}, NDCG@10 "
                 f"{best['seed_stats']['ndcg']['mean']:.4f} "
                 f"{_ci(best['seed_stats']['ndcg']['ci95'])} (95% t-interval, "
                 f"{best['seed_stats']['hr']['n']} seeds)"
                 if isinstance(best['seed_stats'], dict) and best['seed_stats']['hr']['ci95']
                 else str(best['seed_stats']))]
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
    lines += ['', f'## Grid: {name} (in evaluation order: initial grid, then the search)', '',
              '| ' + ' | '.join(keys) + ' | valid HR@10 | HR@10 | NDCG@10 | full HR@10 |',
              '|' + '---|' * (len(keys) + 4)]
    for row in grid:
      lines.append('| ' + ' | '.join(f'{row[k]:g}' for k in keys)
                   + f" | {row['valid_hr']:.4f} | {row['hr']:.4f} | {row['ndcg']:.4f} | "
                   f"{row['full_hr']:.4f} |")
  return '\n'.join(lines) + '\n'
