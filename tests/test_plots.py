"""The figures: every results JSON gives its PNG, atomically; bad input fails in one line."""

import importlib.util
import json
import os
import sys

import pytest

from conftest import run_entry
from experiments import plots

# Found, not imported: every test process collects this file, one runs it.
pytestmark = pytest.mark.skipif(importlib.util.find_spec('matplotlib') is None,
                                reason='matplotlib (the plots extra) is not installed')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_EPOCHS = 4  # epochs 1..4 after the untrained epoch 0


def write_metrics(workdir, num_epochs=NUM_EPOCHS):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w', encoding='utf-8') as f:
    f.write(json.dumps(dict(epoch=0, loss=None, hr=.1, ndcg=.05)) + '\n')
    for epoch in range(1, num_epochs + 1):
      f.write(json.dumps(dict(epoch=epoch, loss=.5 / epoch, hr=.5 + epoch / 100,
                              ndcg=.3 + epoch / 100, valid_hr=.5, valid_ndcg=.3)) + '\n')


def write_results(results_dir, experiment, rows):
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, f'{experiment}.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(dict(experiment=experiment, command='python -m experiments.reproduce', rows=rows),
              f)
  return path


def factors_rows(with_workdirs=True):
  rows = [dict(name=f'{m}-{f}', model=m, factors=f, hr=.6 + f / 1000, ndcg=.35 + f / 1000,
               best_epoch=3, selection='test (as in the paper)',
               **(dict(workdir=os.path.join('runs', 'factors', f'{m}-{f}'))
                  if with_workdirs else {}))
          for m in ('gmf', 'mlp', 'neumf', 'mf') for f in (8, 16, 32)]
  return rows + [dict(name='itempop', model='itempop', factors=None, hr=.45, ndcg=.25)]


def write_all(root, experiments=plots.EXPERIMENTS):
  """Under `root`: results/<experiment>.json for `experiments`, and the 8-factor workdirs."""
  results_dir = root / 'results'
  rows = dict(factors=factors_rows())
  for model in ('gmf', 'mlp', 'neumf'):
    write_metrics(root / 'runs' / 'factors' / f'{model}-8')
  rows['negatives'] = [dict(name=f'neumf-neg{n}', model='neumf', num_negatives=n,
                            hr=.6 + n / 100, ndcg=.4) for n in range(1, 5)]
  rows['table3'] = [dict(name=f'mlp{h}-{f}', factors=f, hidden_layers=h, hr=.45 + h / 20,
                         ndcg=.3) for f in (8, 16) for h in range(5)]
  rows['table2'] = [dict(name=f'neumf-{f}', factors=f, pretrained=p, hr=.68, ndcg=.41,
                         paper_hr=.69, paper_ndcg=.42, full_hr=.05, full_ndcg=.02)
                    for f in (8, 16) for p in (False, True)]
  for experiment in experiments:
    write_results(results_dir, experiment, rows[experiment])
  return root


@pytest.fixture
def results(tmp_path):
  """A repo root with results JSONs for every experiment and the 8-factor workdirs."""
  return write_all(tmp_path)


def assert_png(path):
  with open(path, 'rb') as f:
    data = f.read()
  assert data.startswith(b'\x89PNG\r\n\x1a\n'), path
  assert len(data) > 5000, (path, len(data))


def test_make_all_writes_every_figure_and_no_temporaries(results):
  results_dir = str(results / 'results')
  written = plots.make_all(results_dir, str(results))
  names = ['factors', 'curves', 'negatives', 'table3', 'table2']
  assert written == [os.path.join(results_dir, f'{name}.png') for name in names]
  for path in written:
    assert_png(path)
  assert sorted(os.listdir(results_dir)) == sorted(
      [f'{n}.png' for n in names] + [f'{n}.json' for n in plots.EXPERIMENTS])


def test_no_curves_without_the_workdirs(tmp_path):
  write_results(tmp_path, 'factors', factors_rows(with_workdirs=False))
  assert plots.make_all(str(tmp_path), str(tmp_path)) == [str(tmp_path / 'factors.png')]


def test_curves_plot_every_epoch_and_the_loss_from_epoch_one(tmp_path):
  write_metrics(tmp_path / 'a')
  write_metrics(tmp_path / 'b', num_epochs=2)
  fig = plots.plot_curves({'A': str(tmp_path / 'a'), 'B': str(tmp_path / 'b')},
                          str(tmp_path / 'curves.png'))
  loss_ax, hr_ax = fig.axes
  assert [line.get_label() for line in loss_ax.get_lines()] == ['A', 'B']
  assert [list(line.get_xdata()) for line in loss_ax.get_lines()] == [[1, 2, 3, 4], [1, 2]]
  assert list(loss_ax.get_lines()[0].get_ydata()) == [.5 / e for e in range(1, 5)]
  assert [list(line.get_xdata()) for line in hr_ax.get_lines()] == [[0, 1, 2, 3, 4], [0, 1, 2]]
  assert_png(tmp_path / 'curves.png')


def test_factors_figure_has_a_log2_axis_and_itempop_dashed(tmp_path):
  fig = plots.plot_factors(factors_rows(), str(tmp_path / 'factors.png'))
  for ax in fig.axes:
    assert ax.get_xscale() == 'log'
    assert list(ax.get_xticks()) == [8, 16, 32]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ['GMF', 'MLP', 'NeuMF', 'MF', 'ItemPop']
    assert lines['ItemPop'].get_linestyle() == '--'
  assert list(fig.axes[1].get_lines()[0].get_ydata()) == [.358, .366, .382]  # GMF's NDCG


@pytest.mark.parametrize('experiment, drop, key', [
    ('factors', 'rows', 'rows'), ('negatives', 'num_negatives', 'num_negatives'),
    ('table3', 'hidden_layers', 'hidden_layers'), ('table2', 'paper_hr', 'paper_hr')])
def test_a_missing_key_names_the_file_and_the_key(tmp_path, experiment, drop, key):
  results = write_all(tmp_path, [experiment])
  path = os.path.join(results, 'results', f'{experiment}.json')
  with open(path, encoding='utf-8') as f:
    content = json.load(f)
  if drop == 'rows':
    del content['rows']
  else:
    del content['rows'][-1][drop]
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(content, f)
  with pytest.raises(ValueError) as error:
    plots.make_all(str(results / 'results'), str(results))
  message = str(error.value)
  assert path in message and f"'{key}'" in message and '\n' not in message
  assert not [n for n in os.listdir(results / 'results') if n.endswith('.tmp')]


def test_command_line_prints_the_paths_and_asks_for_matplotlib(results, monkeypatch):
  results_dir = str(results / 'results')
  # In this process (`python -m experiments.plots --help` runs as a process in test_help.py).
  done = run_entry('experiments.plots', f'--results_dir={results_dir}',
                   f'--repo_root={results}', cwd=REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  names = ['factors', 'curves', 'negatives', 'table3', 'table2']
  assert done.stdout.split() == [os.path.join(results_dir, f'{n}.png') for n in names]
  # Without matplotlib (an import of it fails): in this process, the same entry point.
  monkeypatch.setitem(sys.modules, 'matplotlib', None)
  without = run_entry('experiments.plots', cwd=REPO)
  assert without.returncode == 1
  assert without.stderr.strip() == f'error: {plots.MISSING_MATPLOTLIB}'
