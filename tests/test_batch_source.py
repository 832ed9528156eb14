"""The two executors of the epoch definition: same batches, fixed shapes, padding; and the
same training records from either. (The same batches on 1 and 4 devices:
multi_device_checks.py.)"""

import json

import jax
from jax.sharding import Mesh
import numpy as np
import pytest

from conftest import make_config, train_quietly
from ncf_jax import batch_source
from ncf_jax import epoch as ep
from ncf_jax import sharding
from ncf_jax.data import synthetic

NAMES = ('users', 'items', 'labels', 'weights')


def _layout(num_devices=1):
  return sharding.Layout(Mesh(np.array(jax.devices()[:num_devices]), (sharding.DATA,)))


def _definition(k=4):
  data = synthetic.generate(num_users=90, num_items=50, interactions_per_user=12,
                            num_test_negatives=10, seed=2)
  return ep.build_arrays(data.train_users, data.train_items, data.train_users,
                         data.train_items, data.num_users, data.num_items, k, True)


def epoch_batches(source, epoch):
  """Every step's batch of one epoch from `source`, as (steps, B) NumPy arrays."""
  select = jax.jit(source.select, in_shardings=(source.inputs_sharding(), None))
  steps = []
  for inputs, num_steps in source.chunks(epoch):
    for i in range(num_steps):
      steps.append({k: np.asarray(v) for k, v in select(inputs, np.int32(i)).items()})
  return {k: np.stack([s[k] for s in steps]) for k in NAMES}


def _reference(spec, arrays, seed, epoch, batch_size):
  """The epoch laid out by hand: example g at step g // B, column g % B, then padding."""
  steps = -(-spec.num_examples // batch_size)
  out = {k: np.zeros(steps * batch_size, np.float32 if k in ('labels', 'weights') else np.int32)
         for k in NAMES}
  users, items, labels = ep.host_examples(spec, arrays, ep.epoch_keys(seed, epoch),
                                          np.arange(spec.num_examples))
  n = spec.num_examples
  out['users'][:n], out['items'][:n], out['labels'][:n], out['weights'][:n] = (users, items,
                                                                                labels, 1)
  return {k: v.reshape(steps, batch_size) for k, v in out.items()}


@pytest.mark.parametrize('sampler', batch_source.SAMPLERS)
@pytest.mark.parametrize('batch_size,steps_per_chunk', [(64, 3), (128, 1), (1000, 2)])
def test_source_batches_are_the_definition_in_order(sampler, batch_size, steps_per_chunk):
  spec, arrays = _definition()
  source = batch_source.create(sampler, spec, arrays, 5, batch_size, steps_per_chunk, _layout(),
                               last_epoch=3)
  try:
    for epoch in (2, 3):
      got = epoch_batches(source, epoch)
      expected = _reference(spec, arrays, 5, epoch, batch_size)
      for k in NAMES:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
  finally:
    source.close()


def test_host_source_threads_and_prefetch_do_not_change_batches():
  spec, arrays = _definition()
  one = batch_source.HostBatches(spec, arrays, 1, 96, 2, _layout(), threads=1, chunks_ahead=1)
  many = batch_source.HostBatches(spec, arrays, 1, 96, 2, _layout(), threads=3, chunks_ahead=7)
  try:
    for epoch in (1, 2, 1):  # and back: a restart discards what was made ahead
      a, b = epoch_batches(one, epoch), epoch_batches(many, epoch)
      for k in NAMES:
        np.testing.assert_array_equal(a[k], b[k])
    assert many.wait_seconds >= 0
  finally:
    one.close()
    many.close()


def _records(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  timing = lambda key: key.endswith('_seconds') or key == 'samples_per_second'
  return [{k: v for k, v in json.loads(line).items() if not timing(k)} for line in lines]


def test_training_records_are_identical_with_either_executor(tmp_path):
  records = {}
  for sampler in batch_source.SAMPLERS:
    config = make_config(num_epochs=2, sampler=sampler, exclude_heldout_from_negatives=True)
    train_quietly(config, tmp_path / sampler)
    records[sampler] = _records(tmp_path / sampler)
  assert records['host'] == records['device']
  assert records['host'][-1]['loss'] > 0
