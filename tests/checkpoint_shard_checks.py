"""Checkpoint digests of sharded arrays on 8 forced CPU devices (run by
tests/test_many_devices.py in such a process; skipped on fewer devices): each piece is
digested from the shard that holds it, keyed by global rows; restoring on 1 or 4 devices
verifies the same pieces; nothing is gathered."""

import hashlib
import json

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from ncf_jax import checkpoints
from ncf_jax.errors import DamagedCheckpointError

pytestmark = pytest.mark.skipif(jax.device_count() < 8,
                                reason='run by tests/test_checkpoint_layout.py on 8 forced devices')

ROWS, WIDTH = 2048, 4


def _mesh(devices):
  return Mesh(np.array(jax.devices()[:devices]), ('data',))


def _shardings(devices):
  mesh = _mesh(devices)
  return dict(step=NamedSharding(mesh, P()),
              params=dict(table=NamedSharding(mesh, P('data', None)),
                          bias=NamedSharding(mesh, P())),
              opt=dict(mu=NamedSharding(mesh, P('data', None))))


def _values():
  rng = np.random.default_rng(0)
  return dict(step=np.int32(7),
              params=dict(table=rng.standard_normal((ROWS, WIDTH)).astype(np.float32),
                          bias=np.arange(3, dtype=np.float32)),
              opt=dict(mu=rng.standard_normal((ROWS, WIDTH)).astype(np.float32)))


def _abstract(devices):
  return jax.tree_util.tree_map(lambda v, s: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=s),
                                _values(), _shardings(devices))


def _reference(array, start, stop):
  """BLAKE2b-128 of dtype, global shape and rows, by hand (not through the module)."""
  array = np.asarray(array)
  rows = array.reshape(array.shape[0] if array.ndim else 1, -1)[start:stop]
  header = f'{array.dtype.str}{array.shape}'.encode()
  return hashlib.blake2b(header + rows.tobytes(), digest_size=16).hexdigest()


@pytest.fixture()
def no_gathers(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('process_allgather called')
  monkeypatch.setattr(multihost_utils, 'process_allgather', refuse)


@pytest.fixture()
def saved(tmp_path, no_gathers):
  values = _values()
  state = jax.tree_util.tree_map(jax.device_put, values, _shardings(8))
  directory = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'), writer=True)
  directory.save(1, state, dict(epoch=1, step=7))
  directory.finish_save()
  directory.close()
  return tmp_path / 'ckpt', values


def test_each_shard_is_digested_once_keyed_by_its_global_rows(saved):
  path, values = saved
  record = json.loads((path / '1' / checkpoints.DIGESTS.format(0)).read_text())['arrays']
  shard = ROWS // 8
  assert sorted(record['params/table'], key=lambda k: int(k.split(':')[0])) == [
      f'{s}:{s + shard}' for s in range(0, ROWS, shard)]
  assert list(record['params/bias']) == ['0:3']  # replicated on 8 devices: digested once
  for key, digest in record['params/table'].items():
    start, stop = map(int, key.split(':'))
    assert digest == _reference(values['params']['table'], start, stop)
  assert record['step'] == {'0:1': _reference(values['step'], 0, 1)}


@pytest.mark.parametrize('devices', [1, 4, 8])
def test_a_checkpoint_of_8_devices_verifies_on_1_and_4(saved, devices):
  path, values = saved
  reader = checkpoints.CheckpointDir(str(path))
  state, meta = reader.restore(1, _abstract(devices))
  assert meta['epoch'] == 1
  assert len(state['params']['table'].sharding.device_set) == devices
  np.testing.assert_array_equal(np.asarray(state['params']['table']), values['params']['table'])
  params, _ = reader.restore_params(1, _abstract(devices)['params'],
                                    _shardings(devices)['params'])
  assert len(params['table'].sharding.device_set) == devices
  reader.close()


@pytest.mark.parametrize('devices', [1, 4])
def test_a_damaged_piece_is_found_on_any_mesh(saved, devices):
  path, _ = saved
  digests = path / '1' / checkpoints.DIGESTS.format(0)
  record = json.loads(digests.read_text())
  record['arrays']['params/table']['256:512'] = '0' * 32
  digests.write_text(json.dumps(record))
  reader = checkpoints.CheckpointDir(str(path))
  with pytest.raises(DamagedCheckpointError, match=r'params/table rows 256\.\.511 do not match'):
    reader.restore(1, _abstract(devices))
  reader.close()


def test_params_restore_onto_one_device_by_default(saved):
  path, values = saved
  reader = checkpoints.CheckpointDir(str(path))
  params, _ = reader.restore_params(1, _abstract(8)['params'])
  assert all(len(leaf.sharding.device_set) == 1 for leaf in jax.tree_util.tree_leaves(params))
  np.testing.assert_array_equal(np.asarray(params['bias']), values['params']['bias'])
  reader.close()
