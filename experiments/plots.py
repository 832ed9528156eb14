"""Figures of the reproduced experiments: `python -m experiments.plots [--results_dir=DIR]`.

Reads `experiments/results/<experiment>.json` (written by `experiments.reproduce`) and
writes `<experiment>.png` next to it: Figure 4 (factors), Figure 7 (negatives), Table 3
(hidden layers) and Table 2 (pretraining vs the paper), plus `curves.png` (Figure 6:
training loss and test HR@10 per epoch of GMF, MLP and NeuMF with 8 factors) when the
factors runs' workdirs are there. Needs matplotlib (`pip install -e ".[plots]"`); the
figures are drawn on Agg canvases, so pyplot's global backend is never touched.
"""

import json
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from ncf_jax import cli
from ncf_jax import run_dir
from ncf_jax.errors import NcfError

if TYPE_CHECKING:
  from matplotlib.axes import Axes
  from matplotlib.figure import Figure

MISSING_MATPLOTLIB = 'plots need matplotlib: pip install -e ".[plots]"'
EXPERIMENTS = ('factors', 'negatives', 'table3', 'table2')
# The keys each experiment's rows must carry; ItemPop's row needs no `factors`.
REQUIRED_KEYS = {'factors': ('model', 'factors', 'hr', 'ndcg'),
                 'negatives': ('num_negatives', 'hr', 'ndcg'),
                 'table3': ('hidden_layers', 'factors', 'hr'),
                 'table2': ('factors', 'pretrained', 'hr', 'ndcg', 'paper_hr', 'paper_ndcg')}
MODEL_NAMES = {'gmf': 'GMF', 'mlp': 'MLP', 'neumf': 'NeuMF', 'mf': 'MF', 'itempop': 'ItemPop'}
FIGSIZE = (8.0, 3.2)
DPI = 120

Row = dict[str, Any]


def check_rows(rows: list[Row], experiment: str, source: str = 'rows') -> None:
  """Raises a one-line ValueError naming `source` and the first key a row lacks."""
  for i, row in enumerate(rows):
    if not isinstance(row, dict):
      raise ValueError(f'{source}: row {i} is not a JSON object')
    for key in REQUIRED_KEYS[experiment]:
      if key == 'factors' and experiment == 'factors' and row.get('model') == 'itempop':
        continue
      if key not in row:
        raise ValueError(f"{source}: row {i} ({row.get('name', '?')}) lacks key '{key}'")


def load_rows(path: str, experiment: str) -> list[Row]:
  """The checked `rows` of one results JSON; a one-line ValueError naming the file if bad."""
  try:
    with open(path, encoding='utf-8') as f:
      results = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e.msg}, line {e.lineno})') from None
  if not isinstance(results, dict) or 'rows' not in results:
    raise ValueError(f"{path}: lacks key 'rows'")
  if not isinstance(results['rows'], list):
    raise ValueError(f"{path}: key 'rows' is not a list")
  check_rows(results['rows'], experiment, path)
  return results['rows']


def _figure(ncols: int, title: str) -> 'Figure':
  """A small figure with `ncols` panels on its own Agg canvas (no pyplot state)."""
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
  except ImportError:
    raise ImportError(MISSING_MATPLOTLIB) from None
  fig = Figure(figsize=FIGSIZE, dpi=DPI, layout='constrained')
  FigureCanvasAgg(fig)
  fig.subplots(1, ncols, squeeze=False)
  fig.suptitle(title, fontsize=11)
  return fig


def save_figure(fig: 'Figure', path: str) -> None:
  """Writes `fig` as a PNG to a temporary name beside `path`, then renames it into place."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.{os.getpid()}.tmp')
  try:
    with open(tmp, 'wb') as f:
      fig.savefig(f, format='png', dpi=DPI)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _log2_axis(ax: 'Axes', xs: list[int]) -> None:
  """A log2 x axis with ticks, labelled plainly, at the given values only."""
  from matplotlib.ticker import NullLocator
  ax.set_xscale('log', base=2)
  ax.set_xticks(xs, [str(x) for x in xs])
  ax.xaxis.set_minor_locator(NullLocator())


def _lines(ax: 'Axes', rows: list[Row], group: Callable[[Row], Any], x: str, y: str,
           label: Callable[[Any], str], **style) -> None:
  """One line+markers per group of rows, `y` against `x`, the groups in first-seen order."""
  groups: dict[Any, list[Row]] = {}
  for row in rows:
    groups.setdefault(group(row), []).append(row)
  for key, members in groups.items():
    members = sorted(members, key=lambda r: r[x])
    ax.plot([r[x] for r in members], [r[y] for r in members], marker='o', markersize=4,
            label=label(key), **style)


def _finish(ax: 'Axes', xlabel: str, ylabel: str, legend: bool = False) -> None:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=.3)
  if legend:
    ax.legend(fontsize=8)


def plot_factors(rows: list[Row], path: str) -> 'Figure':
  """Figure 4: HR@10 and NDCG@10 against predictive factors, per model; ItemPop dashed.

  Args:
    rows: the `factors` experiment's rows (`model`, `factors`, `hr`, `ndcg`).
    path: where the PNG goes.

  Returns:
    The figure, already written.
  """
  check_rows(rows, 'factors')
  order = list(MODEL_NAMES)
  models = [r for r in rows if r['model'] != 'itempop' and r.get('factors') is not None]
  models.sort(key=lambda r: (order.index(r['model']) if r['model'] in order else len(order)))
  baselines = [r for r in rows if r['model'] == 'itempop']
  fig = _figure(2, 'ML-1M, HR@10 and NDCG@10 by predictive factors')
  for ax, metric, name in zip(fig.axes, ('hr', 'ndcg'), ('HR@10', 'NDCG@10')):
    _lines(ax, models, lambda r: r['model'], 'factors', metric,
           lambda m: MODEL_NAMES.get(m, m))
    for row in baselines:
      ax.axhline(row[metric], linestyle='--', color='gray', label='ItemPop')
    if models:
      _log2_axis(ax, sorted({r['factors'] for r in models}))
    _finish(ax, 'factors', name, legend=ax is fig.axes[0])
  save_figure(fig, path)
  return fig


def plot_negatives(rows: list[Row], path: str) -> 'Figure':
  """Figure 7: HR@10 and NDCG@10 against the number of negatives per positive.

  Args:
    rows: the `negatives` experiment's rows (`num_negatives`, `hr`, `ndcg`).
    path: where the PNG goes.

  Returns:
    The figure, already written.
  """
  check_rows(rows, 'negatives')
  fig = _figure(2, 'ML-1M, HR@10 and NDCG@10 by negatives per positive')
  for ax, metric, name in zip(fig.axes, ('hr', 'ndcg'), ('HR@10', 'NDCG@10')):
    _lines(ax, rows, lambda r: r.get('model', 'neumf'), 'num_negatives', metric,
           lambda m: MODEL_NAMES.get(m, m))
    ax.set_xticks(sorted({r['num_negatives'] for r in rows}))
    _finish(ax, 'negatives per positive', name, legend=ax is fig.axes[0])
  save_figure(fig, path)
  return fig


def plot_table3(rows: list[Row], path: str) -> 'Figure':
  """Table 3: MLP's HR@10 against the number of hidden layers, one line per factors.

  Args:
    rows: the `table3` experiment's rows (`hidden_layers`, `factors`, `hr`).
    path: where the PNG goes.

  Returns:
    The figure, already written.
  """
  check_rows(rows, 'table3')
  fig = _figure(1, 'ML-1M, MLP HR@10 by hidden layers')
  ax = fig.axes[0]
  _lines(ax, sorted(rows, key=lambda r: r['factors']), lambda r: r['factors'],
         'hidden_layers', 'hr', lambda f: f'{f} factors')
  paper = sorted((r['hidden_layers'], r['paper_hr']) for r in rows if r.get('paper_hr'))
  if paper:  # the paper reports Table 3's HR@10 for 8 factors
    ax.plot(*zip(*paper), '--', color='gray', marker='o', label='paper, 8 factors')
  ax.set_xticks(sorted({r['hidden_layers'] for r in rows}))
  _finish(ax, 'hidden layers', 'HR@10', legend=True)
  save_figure(fig, path)
  return fig


def plot_table2(rows: list[Row], path: str) -> 'Figure':
  """Table 2: NeuMF without/with pretraining, ours (solid) vs the paper's (dashed).

  Args:
    rows: the `table2` experiment's rows (`factors`, `pretrained`, `hr`, `ndcg`,
      `paper_hr`, `paper_ndcg`).
    path: where the PNG goes.

  Returns:
    The figure, already written.
  """
  check_rows(rows, 'table2')
  rows = sorted(rows, key=lambda r: bool(r['pretrained']))
  fig = _figure(2, 'ML-1M, NeuMF HR@10 and NDCG@10: ours vs the paper')
  for ax, metric, name in zip(fig.axes, ('hr', 'ndcg'), ('HR@10', 'NDCG@10')):
    for pretrained, color in ((False, 'C0'), (True, 'C1')):
      these = [r for r in rows if bool(r['pretrained']) == pretrained]
      kind = 'with' if pretrained else 'without'
      _lines(ax, these, lambda r: 'ours', 'factors', metric,
             lambda _: f'ours, {kind} pretraining', color=color)
      _lines(ax, these, lambda r: 'paper', 'factors', f'paper_{metric}',
             lambda _: f'paper, {kind} pretraining', color=color, linestyle='--', alpha=.6)
    if rows:
      _log2_axis(ax, sorted({r['factors'] for r in rows}))
    _finish(ax, 'factors', name, legend=ax is fig.axes[0])
  save_figure(fig, path)
  return fig


def plot_curves(runs: dict[str, str], path: str) -> 'Figure':
  """Figure 6: training loss (epochs 1..) and test HR@10 (epochs 0..) per epoch.

  Args:
    runs: label -> workdir of a run that logged metrics.
    path: where the PNG goes.

  Returns:
    The figure, already written; its first panel holds the loss lines, the second
    the HR@10 lines, in the order of `runs`.
  """
  fig = _figure(2, 'ML-1M, training loss and test HR@10 per epoch')
  loss_ax, hr_ax = fig.axes
  for label, workdir in runs.items():
    records = run_dir.RunDir(workdir).read_metrics()
    losses = [r for r in records if r['epoch'] > 0 and r.get('loss') is not None]
    loss_ax.plot([r['epoch'] for r in losses], [r['loss'] for r in losses], marker='.',
                 label=label)
    hr_ax.plot([r['epoch'] for r in records], [r['hr'] for r in records], marker='.',
               label=label)
  _finish(loss_ax, 'epoch', 'training log loss', legend=True)
  _finish(hr_ax, 'epoch', 'HR@10')
  save_figure(fig, path)
  return fig


PLOTTERS: dict[str, Callable[[list[Row], str], 'Figure']] = {
    'factors': plot_factors, 'negatives': plot_negatives, 'table3': plot_table3,
    'table2': plot_table2}


def curve_runs(rows: list[Row], repo_root: str) -> dict[str, str] | None:
  """GMF/MLP/NeuMF at 8 factors -> workdir, if all three rows' runs logged metrics."""
  runs = {}
  for model in ('gmf', 'mlp', 'neumf'):
    for row in rows:
      workdir = row.get('workdir')
      if (row.get('model') == model and row.get('factors') == 8 and workdir and
          run_dir.RunDir(os.path.join(repo_root, workdir)).read_metrics()):
        runs[MODEL_NAMES[model]] = os.path.join(repo_root, workdir)
        break
    else:
      return None
  return runs


def make_all(results_dir: str, repo_root: str) -> list[str]:
  """Writes `<experiment>.png` for each `<experiment>.json` in `results_dir`, and curves.png.

  Args:
    results_dir: where the results JSONs are and the PNGs go.
    repo_root: what the rows' relative workdirs are relative to.

  Returns:
    The paths written.
  """
  written = []
  for experiment in EXPERIMENTS:
    source = os.path.join(results_dir, f'{experiment}.json')
    if not os.path.isfile(source):
      continue
    rows = load_rows(source, experiment)
    path = os.path.join(results_dir, f'{experiment}.png')
    PLOTTERS[experiment](rows, path)
    written.append(path)
    if experiment == 'factors' and (runs := curve_runs(rows, repo_root)):
      path = os.path.join(results_dir, 'curves.png')
      plot_curves(runs, path)
      written.append(path)
  return written


def _define_flags() -> None:
  """The command line's flags; only when run as a script, so importing defines none."""
  from absl import flags
  flags.DEFINE_string('results_dir', os.path.join('experiments', 'results'),
                      'Where the results JSONs are and the PNGs go.')
  flags.DEFINE_string('repo_root', '.', 'What the rows\' relative workdirs are relative to.')


def main(argv: list[str]) -> None:
  """Writes every figure the results allow and prints their paths."""
  from absl import flags
  try:
    import matplotlib  # noqa: F401
  except ImportError:
    raise NcfError(MISSING_MATPLOTLIB) from None
  values = flags.FLAGS
  try:
    written = make_all(values.results_dir, values.repo_root)
  except ValueError as e:
    raise NcfError(str(e)) from None
  if not written:
    print(f'no results JSON in {values.results_dir}', file=sys.stderr)
  for path in written:
    print(path)


if __name__ == '__main__':
  cli.run(main, _define_flags)
