"""Which fields change a run: one answer (`config_fields.computing_fields`), read by the run's
identity, the default workdir's name and the provenance record, checked against expectations
written out by hand."""

import hashlib
import json
import os

from conftest import ROOT

from ncf_jax import config_fields
from ncf_jax import run_dir
from ncf_jax import run_settings
from ncf_jax import workdir_flags
from ncf_jax.configs import default

# Written out here, not read from the code: the fields a run may change and still be the same
# run (it stops at another epoch, prints more often, dispatches or evaluates in other chunks,
# runs on other devices, or makes its batches on another executor).
NOT_COMPUTING = {'num_epochs', 'log_every_seconds', 'steps_per_dispatch', 'eval_users_per_block',
                 'num_devices', 'target_hr', 'sampler'}


def test_computing_fields_of_a_hand_written_config():
  config = {'num_epochs': 3, 'seed': 1, 'learning_rate': 0.5, 'sampler': 'device',
            'synthetic': {'seed': 0, 'num_users': 9}, 'target_hr': 0.6,
            'provenance': {'data_fingerprint': 'sha256:00'}}
  assert config_fields.computing_fields(config) == {
      'learning_rate': 0.5, 'seed': 1, 'synthetic': {'seed': 0, 'num_users': 9}}


def test_every_default_field_is_computing_unless_listed_here():
  config = run_settings.config_json(default.get_config())
  computing = config_fields.computing_fields(config)
  assert set(computing) == set(config) - NOT_COMPUTING
  assert NOT_COMPUTING <= set(config)  # each listed field is a real one


def test_differing_fields_are_dotted_and_include_one_sided_ones():
  ours = {'a': 1, 'b': {'c': 2, 'd': 3}}
  theirs = {'a': 1, 'b': {'c': 5}, 'e': 0}
  assert config_fields.differing_fields(ours, theirs) == ['b.c', 'b.d', 'e']
  assert config_fields.differing_fields(ours, ours) == []


def test_run_identity_is_the_digest_of_the_flattened_computing_fields():
  # The formula of the checkpoints already written (their `run_identity` must still match):
  # sha256 of the sorted JSON of {dotted field: value}, first 16 hex digits.
  config = {'model': 'gmf', 'num_epochs': 7, 'synthetic': {'seed': 0}, 'provenance': {'x': 1}}
  by_hand = hashlib.sha256(json.dumps({'model': 'gmf', 'synthetic.seed': 0},
                                      sort_keys=True).encode()).hexdigest()[:16]
  assert run_dir.run_identity(config_fields.computing_fields(config)) == by_hand


def test_identity_and_default_workdir_change_exactly_with_a_computing_field(tmp_path):
  config_file = os.path.join(ROOT, 'configs', 'default.py')
  identity = lambda c: run_dir.run_identity(
      config_fields.computing_fields(run_settings.config_json(c)))
  folder = lambda c: os.path.basename(workdir_flags.default_workdir(config_file, c,
                                                                    cwd=str(tmp_path)))
  base = default.get_config()
  changes = dict(num_epochs=99, log_every_seconds=1.0, steps_per_dispatch=3,
                 eval_users_per_block=7, num_devices=1, target_hr=0.5, sampler='device',
                 seed=5, learning_rate=0.25, num_factors=16, optimizer='sgd', validation=True)
  for field, value in changes.items():
    changed = default.get_config()
    changed[field] = value
    same = field in NOT_COMPUTING
    assert (identity(changed) == identity(base)) == same, field
    assert (folder(changed) == folder(base)) == same, field
    assert (folder(changed) == 'default') == same, field
