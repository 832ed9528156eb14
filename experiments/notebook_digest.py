"""The digest of what produced the quickstart notebook's saved outputs: its code cells and
the functions that print a run's console lines. `execute_notebook` stores it in the
notebook's metadata (`ncf_jax.outputs_digest`); tests/test_notebook.py fails when the code
changed since, so the outputs GitHub shows never lag behind the code."""

import hashlib
import inspect
import json

KEY = 'ncf_jax'
# What the notebook's printed lines come from (train.py's console lines, recommend's scores).
PRODUCERS = ('ncf_jax.train:format_record', 'ncf_jax.train:format_duration',
             'ncf_jax.train:run_seconds_left', 'ncf_jax.train:target_line',
             'ncf_jax.train:train_and_evaluate', 'ncf_jax.recommend:Recommender.recommend')


def _source(name: str) -> str:
  import importlib  # pylint: disable=g-import-not-at-top
  module_name, qualname = name.split(':')
  target = importlib.import_module(module_name)
  for part in qualname.split('.'):
    target = getattr(target, part)
  return inspect.getsource(target)


def outputs_digest(notebook: dict) -> str:
  """sha256 (16 hex digits) of the code cells' sources and PRODUCERS' sources."""
  digest = hashlib.sha256()
  for cell in notebook['cells']:
    if cell['cell_type'] == 'code':
      source = cell['source'] if isinstance(cell['source'], str) else ''.join(cell['source'])
      digest.update(source.encode() + b'\0')
  for name in PRODUCERS:
    digest.update(name.encode() + b'\0' + _source(name).encode() + b'\0')
  return digest.hexdigest()[:16]


def stored_digest(path: str) -> str | None:
  with open(path, encoding='utf-8') as f:
    return json.load(f).get('metadata', {}).get(KEY, {}).get('outputs_digest')
