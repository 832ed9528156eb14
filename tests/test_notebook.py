"""experiments/quickstart.ipynb runs top to bottom (on synthetic data)."""

import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs(monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  monkeypatch.delenv('ML1M_DIR', raising=False)
  monkeypatch.delenv('RUN_ML1M', raising=False)
  # The notebook sets XLA_FLAGS for its own process; keep it from leaking into later tests.
  monkeypatch.setenv('XLA_FLAGS', os.environ.get('XLA_FLAGS', ''))
  pytest.importorskip('ml_collections')
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
  except ImportError:
    pass
  with open(os.path.join(REPO, 'experiments', 'quickstart.ipynb'), encoding='utf-8') as f:
    notebook = json.load(f)
  namespace = {'__name__': '__main__'}
  for cell in notebook['cells']:
    if cell['cell_type'] != 'code':
      continue
    # Shell and magic lines are Colab's business; everything else runs as written.
    source = ''.join(line for line in cell['source'] if not line.lstrip().startswith(('!', '%')))
    exec(compile(source, 'quickstart.ipynb', 'exec'), namespace)  # pylint: disable=exec-used
  history = namespace['history']
  assert [r['epoch'] for r in history] == list(range(5))
  assert max(r['hr'] for r in history) > history[0]['hr']
  assert 'skipped' in capsys.readouterr().out
