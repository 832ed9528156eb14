"""The checkpoint layout: one write per epoch (the best is a kept epoch, not a copy), the
record each checkpoint carries, digests on a worker thread, readers restoring parameters
only (digests of sharded arrays by global rows: checkpoint_shard_checks.py, run by
test_many_devices on 8 forced devices)."""

import json
import os
import threading

import jax
import numpy as np
import pytest

from conftest import make_config, read_records, train_quietly
from ncf_jax import checkpoints
from ncf_jax import config_fields
from ncf_jax import run_dir
from ncf_jax import trained_run
from ncf_jax import shard_digests
from ncf_jax.errors import DamagedCheckpointError


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('layout') / 'run'
  train_quietly(make_config(num_epochs=4), workdir)
  return workdir


def test_one_folder_per_kept_epoch_the_last_two_and_the_best(finished):
  records = read_records(finished)
  best = max(records, key=lambda r: r['hr'])  # the first of the best (max keeps the first)
  assert os.listdir(finished / 'checkpoints') == ['latest']  # no second copy of the best
  kept = sorted(int(n) for n in os.listdir(finished / 'checkpoints' / 'latest'))
  assert kept == sorted({3, 4, best['epoch']})
  assert run_dir.RunDir(str(finished)).best_epoch() == best['epoch']


def test_each_checkpoint_holds_its_epoch_step_run_identity_and_record(finished):
  config = run_dir.RunDir(str(finished)).read_config_json()
  by_epoch = {r['epoch']: r for r in read_records(finished)}
  for name in os.listdir(finished / 'checkpoints' / 'latest'):
    meta = json.loads((finished / 'checkpoints' / 'latest' / name / 'meta' / 'metadata')
                      .read_text())
    assert meta['epoch'] == int(name)
    assert meta['step'] == by_epoch[int(name)]['step']
    assert meta['record'] == by_epoch[int(name)]
    assert meta['run_identity'] == run_dir.run_identity(config_fields.computing_fields(config))


def test_load_best_restores_the_parameters_alone_onto_one_device(finished, monkeypatch):
  requested = []
  original = checkpoints.CheckpointDir.restore_params

  def spy(self, epoch, abstract_params, shardings=None, identity=None, **rest):
    requested.append(abstract_params)
    return original(self, epoch, abstract_params, shardings, identity, **rest)

  monkeypatch.setattr(checkpoints.CheckpointDir, 'restore_params', spy)
  monkeypatch.setattr(checkpoints.CheckpointDir, 'restore',
                      lambda *a, **k: pytest.fail('a reader restored the whole state'))
  trained = trained_run.load_best(str(finished))
  assert set(requested[0]) == set(trained.params)  # the params tree: no optimizer slots
  assert all(len(leaf.devices()) == 1 for leaf in jax.tree_util.tree_leaves(trained.params))


def _state(seed=0):
  rng = np.random.default_rng(seed)
  return dict(step=np.int32(2), params=dict(table=rng.standard_normal((3000, 4), np.float32)),
              opt=dict(mu=rng.standard_normal((3000, 4), np.float32)))


def test_digests_run_on_a_worker_thread_and_are_written_before_the_save_counts(
    tmp_path, monkeypatch):
  threads = []
  original = shard_digests.digest

  def spy(copies, *args):
    threads.append(threading.current_thread())
    return original(copies, *args)

  monkeypatch.setattr(shard_digests, 'digest', spy)
  directory = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'), writer=True)
  directory.save(1, jax.device_put(_state()), dict(epoch=1, step=2))
  assert directory.epochs() == []  # not durable until finished
  directory.finish_save()
  assert threads and threads[0] is not threading.main_thread()
  assert directory.epochs() == [1]
  assert os.path.isfile(tmp_path / 'ckpt' / '1' / checkpoints.DIGESTS.format(0))
  directory.close()


def test_params_verify_without_the_optimizer_digests_but_the_whole_state_does_not(tmp_path):
  directory = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'), writer=True)
  directory.save(1, jax.device_put(_state()), dict(epoch=1, step=2))
  directory.finish_save()
  directory.close()
  digests = tmp_path / 'ckpt' / '1' / checkpoints.DIGESTS.format(0)
  record = json.loads(digests.read_text())
  del record['arrays']['opt/mu']
  digests.write_text(json.dumps(record))
  abstract = jax.eval_shape(lambda: _state())
  reader = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'))
  params, _ = reader.restore_params(1, abstract['params'])
  np.testing.assert_array_equal(np.asarray(params['table']), _state()['params']['table'])
  with pytest.raises(DamagedCheckpointError, match='opt/mu has no recorded digest'):
    reader.restore(1, abstract)
  reader.close()


def test_an_unfinished_save_is_removed_when_a_writer_opens(tmp_path):
  directory = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'), writer=True)
  directory.save(1, jax.device_put(_state()), dict(epoch=1, step=2))
  directory.wait()  # committed by Orbax, digests never written: a killed run
  os.makedirs(tmp_path / 'ckpt' / f'2{checkpoints.TMP_MARK}')
  reopened = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'), writer=True)
  assert os.listdir(tmp_path / 'ckpt') == [] and reopened.epochs() == []
  reopened.close()


def test_block_rows_bound_the_record_for_any_table():
  assert shard_digests.block_rows(138_493) == 1024
  assert shard_digests.block_rows(100_000_000) == 32_768
  assert 100_000_000 / shard_digests.block_rows(100_000_000) <= shard_digests.MAX_BLOCKS


def _format_1_digests(state):
  """Format 1's record, by hand: {name: {first row: BLAKE2b of 1,024-row blocks}}."""
  import hashlib  # pylint: disable=import-outside-toplevel
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    array = np.atleast_1d(np.asarray(leaf))
    rows = array.reshape(array.shape[0], -1)
    header = f'{array.dtype.str}{array.shape}'.encode()
    out[shard_digests.path_name(path)] = {
        str(s): hashlib.blake2b(header + rows[s:s + 1024].tobytes(), digest_size=16).hexdigest()
        for s in range(0, len(rows), 1024)}
  return out


def test_checkpoints_of_format_1_are_still_restored_and_verified(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  state = _state()
  digests = _format_1_digests(state)
  manager = ocp.CheckpointManager(
      str(tmp_path / 'ckpt'), item_handlers={'state': ocp.StandardCheckpointHandler(),
                                             'digests': ocp.JsonCheckpointHandler()})
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          digests=ocp.args.JsonSave(digests)))
  manager.wait_until_finished()
  manager.close()
  abstract = jax.eval_shape(lambda: _state())
  reader = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'))
  assert reader.epochs() == [1]
  restored, meta = reader.restore(1, abstract)
  assert meta == {}
  np.testing.assert_array_equal(np.asarray(restored['opt']['mu']), state['opt']['mu'])
  reader.close()
  record = tmp_path / 'ckpt' / '1' / 'digests' / 'metadata'
  digests['params/table']['2048'] = '0' * 32
  record.write_text(json.dumps(digests))
  reader = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'))
  with pytest.raises(DamagedCheckpointError, match=r'params/table rows 2048\.\.2999 do not'):
    reader.restore_params(1, abstract['params'])
  reader.close()


def test_digests_over_several_threads_equal_those_over_one():
  copies = shard_digests.host_copies(jax.device_put(_state()), writer=True)
  assert shard_digests.digest(copies, threads=3) == shard_digests.digest(copies, threads=1)
