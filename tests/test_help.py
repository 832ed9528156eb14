"""`--help` exits 0 for every entry point, and lists the config fields with their defaults
and a one-line meaning."""

import pytest

from conftest import run_module
from ncf_jax import help_text
from ncf_jax.configs import default

ENTRY_POINTS = ('ncf_jax.main', 'ncf_jax.data', 'ncf_jax.recommend', 'ncf_jax.ensemble',
                'ncf_jax.pipeline', 'ncf_jax.export', 'ncf_jax.benchmark',
                'experiments.reproduce')
TAKES_CONFIG = ('ncf_jax.main', 'ncf_jax.recommend', 'ncf_jax.pipeline')


@pytest.mark.parametrize('module', ENTRY_POINTS)
def test_help_exits_zero(module):
  result = run_module(module, '--help', timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'Traceback' not in result.stderr
  assert result.stdout.strip() and 'flags:' in result.stdout
  if module in TAKES_CONFIG:
    assert '  --config.num_factors=8\n      predictive factors' in result.stdout
    assert '  --config.layers="()"\n' in result.stdout


def test_help_shows_the_given_configs_values():
  result = run_module('ncf_jax.main', '--help', '--config=configs/mf.py', timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'defaults of ' in result.stdout and 'configs/mf.py' in result.stdout
  assert '--config.model=mf\n' in result.stdout


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
