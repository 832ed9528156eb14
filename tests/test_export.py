"""`ncf_jax.export`: the README's loading lines, run in a fresh process that never imports
ncf_jax, give the scores `recommend` gives."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from ncf_jax import export
from ncf_jax.errors import ConfigError
from ncf_jax.recommend import Recommender
from test_own_data import prepared_run  # pylint: disable=unused-import

pytest.importorskip('flatbuffers')


def readme_snippet() -> str:
  """The python block of the README's "Taking a model elsewhere" section."""
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    text = f.read()
  section = text[text.index('### Taking a model elsewhere'):]
  return re.search(r'```python\n(.*?)```', section, re.S).group(1)


@pytest.fixture(scope='module')
def exported(prepared_run, tmp_path_factory):  # pylint: disable=redefined-outer-name
  root = prepared_run[0]
  out = tmp_path_factory.mktemp('export') / 'E'
  info = export.export_workdir(str(root / 'run'), str(out), platforms=('cpu',))
  return root, out, info


def test_the_readme_lines_give_recommends_scores_without_ncf_jax(exported, tmp_path):
  root, out, _ = exported
  snippet = readme_snippet()
  assert "E = 'E'" in snippet
  script = snippet.replace("E = 'E'", f'E = {str(out)!r}') + (
      "import json, sys\n"
      "assert not any(m == 'ncf_jax' or m.startswith('ncf_jax.') for m in sys.modules)\n"
      "n = len(open(f'{E}/users.tsv').read().splitlines())\n"
      "more = score.call(params, np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32) % 9)\n"
      "print(json.dumps([np.asarray(scores).tolist(), np.asarray(more).tolist(),\n"
      "                  str(np.asarray(scores).dtype)]))\n")
  result = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  scores, more, dtype = json.loads(result.stdout.strip().splitlines()[-1])
  assert dtype == 'float32'

  rec = Recommender.from_workdir(str(root / 'run'))
  users_tsv = (out / 'users.tsv').read_text().splitlines()
  items_tsv = (out / 'items.tsv').read_text().splitlines()
  assert users_tsv == list(rec.id_maps.users) and items_tsv == list(rec.id_maps.items)
  expected = rec.score([users_tsv[u] for u in (0, 0, 1)], [items_tsv[i] for i in (5, 7, 5)])
  np.testing.assert_allclose(scores, expected, rtol=1e-6)
  n = len(users_tsv)
  expected = rec.score(users_tsv, [items_tsv[i % 9] for i in range(n)])
  np.testing.assert_allclose(more, expected, rtol=1e-6)


def test_export_json_and_params(exported):
  root, out, info = exported
  with open(out / 'export.json', encoding='utf-8') as f:
    assert json.load(f) == info
  with open(root / 'run' / 'config.json', encoding='utf-8') as f:
    assert info['data_fingerprint'] == json.load(f)['provenance']['data_fingerprint']
  stored = np.load(out / 'params.npz')
  assert sorted(stored.files) == [f'leaf_{i:04d}' for i in range(info['num_leaves'])]


def test_out_folder_with_other_files_is_refused(exported, tmp_path):
  root = exported[0]
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(ConfigError, match='a folder with other files'):
    export.export_workdir(str(root / 'run'), str(tmp_path))
  assert os.listdir(tmp_path) == ['notes.txt']


def test_export_again_replaces_the_earlier_one(exported):
  root, out, _ = exported
  export.export_workdir(str(root / 'run'), str(out), platforms=('cpu',))
  assert sorted(os.listdir(out)) == ['export.json', 'items.tsv', 'params.npz',
                                     'score.jaxexport', 'users.tsv']
  assert not [n for n in os.listdir(out.parent) if n.startswith('.')]


def test_default_export_is_lowered_for_cpu_cuda_and_tpu(exported):
  root = exported[0]
  rec = Recommender.from_workdir(str(root / 'run'))
  exp, leaves = export.export_scoring(rec.model, rec.params)
  assert exp.platforms == ('cpu', 'cuda', 'tpu')
  assert len(exp.in_avals) == len(leaves) + 2
  assert str(exp.in_avals[-1].shape) == '(b,)'  # the batch dimension is symbolic
