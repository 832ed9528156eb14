"""`--help` exits 0 for every entry point, and lists the config fields with their defaults
and a one-line meaning.

Each entry point runs as `python -m MODULE --help` runs it (`runpy`, as `__main__`), all of
them in one process of their own (one interpreter and JAX start, not one per command): the
exit code, stdout and stderr of each command are recorded, and its flags removed before the
next command defines its own."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from ncf_jax import help_text
from ncf_jax.configs import default

ENTRY_POINTS = ('ncf_jax.main', 'ncf_jax.data', 'ncf_jax.recommend', 'ncf_jax.ensemble',
                'ncf_jax.pipeline', 'ncf_jax.export', 'ncf_jax.benchmark',
                'experiments.reproduce', 'experiments.plots')
TAKES_CONFIG = ('ncf_jax.main', 'ncf_jax.recommend', 'ncf_jax.pipeline')
MF_CONFIG_HELP = ('ncf_jax.main', '--help', '--config=configs/mf.py')

# Runs each command of a JSON list of argv's as `python -m` would; prints one JSON object
# {argv joined by spaces: [exit code, stdout, stderr]}.
_EACH_COMMAND = r'''
import contextlib, io, json, runpy, sys, traceback
from absl import flags
results = {}
for argv in json.loads(sys.argv[1]):
  before = set(flags.FLAGS)
  out, err = io.StringIO(), io.StringIO()
  sys.argv = list(argv)
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      runpy.run_module(argv[0], run_name='__main__', alter_sys=True)
      code = 'returned without exiting'
    except SystemExit as e:
      code = 0 if e.code is None else e.code
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()
      code = 'raised'
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  results[' '.join(argv)] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
'''


@pytest.fixture(scope='module')
def helps() -> dict[str, tuple]:
  """{command line: (exit code, stdout, stderr)} of every entry point's --help, and of
  `ncf_jax.main --help --config=configs/mf.py`."""
  commands = [[module, '--help'] for module in ENTRY_POINTS] + [list(MF_CONFIG_HELP)]
  done = subprocess.run([sys.executable, '-c', _EACH_COMMAND, json.dumps(commands)], cwd=ROOT,
                        env=dict(os.environ, JAX_NUMPY_RANK_PROMOTION='raise'),
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads(done.stdout.strip().splitlines()[-1])
  assert len(results) == len(commands)
  return {command: tuple(result) for command, result in results.items()}


@pytest.mark.parametrize('module', ENTRY_POINTS)
def test_help_exits_zero(helps, module):
  code, stdout, stderr = helps[f'{module} --help']
  assert code == 0, stderr
  assert 'Traceback' not in stderr
  assert stdout.strip() and 'flags:' in stdout
  if module in TAKES_CONFIG:
    assert '  --config.num_factors=8\n      predictive factors' in stdout
    assert '  --config.layers="()"\n' in stdout


def test_help_shows_the_given_configs_values(helps):
  code, stdout, stderr = helps[' '.join(MF_CONFIG_HELP)]
  assert code == 0, stderr
  assert 'defaults of ' in stdout and 'configs/mf.py' in stdout
  assert '--config.model=mf\n' in stdout


def _flat(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flat(value, f'{prefix}{key}.')
    else:
      yield prefix + key, value


def test_every_default_field_has_a_default_and_a_meaning():
  fields = {name: (value, meaning) for name, value, meaning in help_text.config_fields()}
  expected = dict(_flat(default.get_config().to_dict()))
  assert set(fields) == set(expected)
  for name, value in expected.items():
    assert fields[name][0] == value
    assert fields[name][1].strip(), f'config field {name} has no meaning in --help'


def test_comment_parsing():
  assert help_text.field_comments(default.__file__)['num_factors'] == (
      'predictive factors: GMF width and last MLP layer')
  assert help_text.field_comments(default.__file__)['validation'].startswith(
      'Carve a validation holdout')
