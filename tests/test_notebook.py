"""experiments/quickstart.ipynb: its code runs top to bottom (on synthetic data) and leaves no
temporary folder behind, and the saved file carries the outputs of a real kernel run."""

import json
import os
import tempfile

import pytest

from conftest import ROOT
from experiments import notebook_digest

NOTEBOOK = os.path.join(ROOT, 'experiments', 'quickstart.ipynb')


def _code_cells() -> list[dict]:
  with open(NOTEBOOK, encoding='utf-8') as f:
    return [cell for cell in json.load(f)['cells'] if cell['cell_type'] == 'code']


def _source(cell: dict) -> str:
  """A code cell as Python: shell and magic lines are Colab's business and are left out."""
  text = cell['source'] if isinstance(cell['source'], str) else ''.join(cell['source'])
  return ''.join(line for line in text.splitlines(keepends=True)
                 if not line.lstrip().startswith(('!', '%')))


def test_quickstart_notebook_runs(monkeypatch, tmp_path, capsys):
  pytest.importorskip('matplotlib')  # the notebook plots; matplotlib is the `plots` extra
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  # Its own temp and working directories, so anything left behind shows.
  temp, cwd = tmp_path / 'tmp', tmp_path / 'cwd'
  temp.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setenv('TMPDIR', str(temp))
  monkeypatch.setattr(tempfile, 'tempdir', str(temp))  # gettempdir() caches its first answer
  monkeypatch.delenv('NCF_DATA_DIR', raising=False)
  monkeypatch.delenv('RUN_ML1M', raising=False)
  namespace = {'__name__': '__main__'}
  try:
    for cell in _code_cells():
      code = compile(_source(cell), f"quickstart.ipynb[{cell.get('id')}]", 'exec')
      exec(code, namespace)  # pylint: disable=exec-used
  finally:
    plt.close('all')
  out = capsys.readouterr().out

  assert namespace['workdir'].startswith(str(temp) + os.sep)  # the runs went to the temp dir...
  assert not os.listdir(temp)  # ...which the notebook removed
  assert not os.listdir(cwd)

  history = namespace['history']
  assert [r['epoch'] for r in history] == list(range(namespace['config'].num_epochs + 1))
  assert namespace['config'].num_epochs == 10
  hr = [r['hr'] for r in history]
  assert hr[0] < 0.15  # untrained: about chance, 10 of 100 candidates
  assert max(hr) > 0.6

  recommendations = namespace['recommendations']
  items = [item for item, _ in recommendations]
  probabilities = [p for _, p in recommendations]
  assert len(items) == 5 == len(set(items))
  assert probabilities == sorted(probabilities, reverse=True)
  assert all(0.0 < p < 1.0 for p in probabilities)
  matrix = namespace['recommender'].train_matrix
  assert not set(items) & set(matrix[namespace['user']].indices)  # no training items
  for item, p in recommendations:
    assert f'item {item:3d}  p = {p:.3f}' in out

  skipped = [line for line in out.splitlines() if line.startswith('skipped:')]
  assert len(skipped) == 1 and 'NCF_DATA_DIR=' in skipped[0], out
  assert 'ml1m_history' not in namespace


def test_saved_notebook_has_outputs_of_a_kernel_run():
  """Saved by `python -m experiments.execute_notebook`: what GitHub shows when it is opened."""
  cells = _code_cells()
  # One run, top to bottom, in one kernel.
  assert [cell.get('execution_count') for cell in cells] == list(range(1, len(cells) + 1))
  outputs = [output for cell in cells for output in cell.get('outputs', [])]
  assert not [o for o in outputs if o['output_type'] == 'error']
  assert any('image/png' in o.get('data', {}) for o in outputs)  # the learning curves
  printed = ''.join(''.join(o['text']) for o in outputs if o['output_type'] == 'stream')
  assert 'best epoch' in printed
  assert 'skipped: set NCF_DATA_DIR=' in printed  # saved from the default path, no MovieLens
  assert os.path.getsize(NOTEBOOK) < 150_000  # a modest figure, no huge outputs


def test_saved_outputs_are_not_older_than_the_code():
  """The saved outputs came from the notebook's code and the console-line code as they are now
  (a digest stored by execute_notebook); else they show a log format that no longer exists."""
  with open(NOTEBOOK, encoding='utf-8') as f:
    notebook = json.load(f)
  assert notebook_digest.stored_digest(NOTEBOOK) == notebook_digest.outputs_digest(notebook), (
      'the notebook\'s saved outputs are older than the code that prints them: run '
      '`python -m experiments.execute_notebook` (pip install nbclient ipykernel) and commit')
