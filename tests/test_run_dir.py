"""The run folder: metrics.jsonl read/trim/append, the best-epoch rule, config.json, the lock,
moving a run aside, and checkpoint digests."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_config
from ncf_jax import checkpoints
from ncf_jax import run_dir
from ncf_jax import run_settings
from ncf_jax import shard_digests
from ncf_jax.errors import DamagedCheckpointError, WorkdirError
from ncf_jax.data.interactions import InteractionSet
from ncf_jax.data import interactions


def _write_lines(path, lines):
  path.write_text(''.join(line + '\n' for line in lines))


def test_metrics_drop_a_truncated_last_line_and_cut_only_after_an_epoch(tmp_path):
  run = run_dir.RunDir(str(tmp_path))
  lines = [json.dumps(dict(epoch=0, hr=0.1)), json.dumps(dict(epoch=1, hr=0.3)), '',
           json.dumps(dict(epoch=2, hr=0.4))]
  (tmp_path / run_dir.METRICS).write_text(
      ''.join(line + '\n' for line in lines) + '{"epoch": 3, "hr": 0.')  # cut short
  assert run.read_metrics() == [dict(epoch=0, hr=0.1), dict(epoch=1, hr=0.3),
                                dict(epoch=2, hr=0.4)]
  assert run.remove_metrics_after(1) == [2]
  assert (tmp_path / run_dir.METRICS).read_text() == ''.join(line + '\n' for line in lines[:2])
  appended = run.append_metrics(dict(epoch=2, hr=np.float32(0.5), loss=float('nan')))
  assert appended == dict(epoch=2, hr=0.5, loss=None)  # strict JSON: NaN becomes null
  assert run.read_metrics()[-1] == appended


def test_best_record_is_the_first_with_the_best_selection_metric():
  test_only = [dict(epoch=e, hr=hr) for e, hr in enumerate((0.1, 0.5, 0.5, 0.4))]
  assert run_dir.best_record(test_only)['epoch'] == 1
  assert run_dir.is_improvement(dict(epoch=4, hr=0.6), test_only)
  assert not run_dir.is_improvement(dict(epoch=4, hr=0.5), test_only)  # ties keep the first
  with_valid = [dict(epoch=e, hr=hr, valid_hr=v)
                for e, (hr, v) in enumerate(((0.1, 0.2), (0.9, 0.3), (0.2, 0.6)))]
  assert run_dir.selection_key(with_valid) == 'valid_hr'
  assert run_dir.best_record(with_valid)['epoch'] == 2  # never chosen on test


def test_config_json_is_strict_json_and_round_trips(tmp_path):
  run = run_dir.RunDir(str(tmp_path))
  config = make_config(layers=(16, 8))
  run.write_config(run_settings.config_json(config))
  json.loads((tmp_path / run_dir.CONFIG).read_text(),
             parse_constant=lambda c: pytest.fail(f'non-JSON constant {c}'))
  assert run.read_config_json() == run_settings.config_json(config)
  assert run_settings.config_json(run.read_config()) == run_settings.config_json(config)


def test_writer_lock_refuses_a_second_writer_and_a_failed_start_leaves_nothing(tmp_path):
  run = run_dir.RunDir(str(tmp_path / 'run'))
  with run.writer():
    assert (tmp_path / 'run' / run_dir.LOCK).read_text() == f'{os.getpid()}\n'
    with pytest.raises(WorkdirError, match=f'another run is training into this workdir '
                                           rf'\(pid {os.getpid()}\)'):
      with run_dir.RunDir(str(tmp_path / 'run')).writer():
        pass
  with pytest.raises(RuntimeError):
    with run_dir.RunDir(str(tmp_path / 'fresh')).writer():
      raise RuntimeError('failed before its first record')
  assert sorted(os.listdir(tmp_path)) == ['run']  # the fresh folder was removed again


def test_move_aside_keeps_the_old_run(tmp_path):
  run = run_dir.RunDir(str(tmp_path / 'run'))
  assert run.move_aside() is None  # nothing there yet
  with run.writer():
    run.append_metrics(dict(epoch=0, hr=0.1))
  moved = run.move_aside()
  assert not os.path.exists(run.path) and os.path.basename(moved).startswith('run.old-')
  assert run_dir.RunDir(moved).read_metrics() == [dict(epoch=0, hr=0.1)]


def _state(seed=0, rows=2500):
  rng = np.random.default_rng(seed)
  return dict(step=jnp.array(3, jnp.int32),
              params=dict(table=jnp.asarray(rng.standard_normal((rows, 4)), jnp.float32),
                          bias=jnp.zeros((1,), jnp.float32)))


def _digests(state):
  return shard_digests.digest(shard_digests.host_copies(state, writer=True))


def test_digests_are_per_block_of_rows_and_catch_changed_contents(tmp_path):
  digests = _digests(_state())
  assert sorted(digests['params/table']) == ['0:1024', '1024:2048', '2048:2500']  # 2,500 rows
  changed = _state()
  changed['params']['table'] = changed['params']['table'].at[1500, 2].add(1e-6)
  other = _digests(changed)
  assert [k for k in digests['params/table']
          if digests['params/table'][k] != other['params/table'][k]] == ['1024:2048']
  assert other['params/bias'] == digests['params/bias']


def test_restoring_a_checkpoint_whose_contents_differ_from_its_digests_fails(tmp_path):
  directory = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'), writer=True)
  directory.save(1, _state(seed=1), dict(epoch=1, step=3))
  directory.finish_save()
  directory.close()
  # Replace the recorded digests by those of other contents: what damaged data would show.
  record = tmp_path / 'ckpt' / '1' / checkpoints.DIGESTS.format(0)
  record.write_text(json.dumps(dict(format=checkpoints.FORMAT, arrays=_digests(_state(seed=2)))))
  reader = checkpoints.CheckpointDir(str(tmp_path / 'ckpt'))
  with pytest.raises(DamagedCheckpointError, match=r'/ckpt/1: damaged checkpoint \(the contents '
                                                   r'of params/table rows 0\.\.1023'):
    reader.restore(1, _state())
  reader.close()
  assert sorted(os.listdir(tmp_path / 'ckpt')) == ['1']  # a reader changes nothing


def test_interaction_set_sorted_key_branch_agrees_with_the_bitmap(monkeypatch):
  rng = np.random.default_rng(0)
  users, items = rng.integers(0, 300, 5000), rng.integers(0, 200, 5000)
  bitmap = InteractionSet(users, items, 300, 200)
  monkeypatch.setattr(interactions, '_MAX_BITMAP_CELLS', 10)  # force the sorted keys
  keys = InteractionSet(users, items, 300, 200)
  assert keys._bitmap is None and bitmap._bitmap is not None  # pylint: disable=protected-access
  qu, qi = rng.integers(0, 300, 20000), rng.integers(0, 200, 20000)
  expected = {(u, i) for u, i in zip(users.tolist(), items.tolist())}
  truth = np.array([(u, i) in expected for u, i in zip(qu.tolist(), qi.tolist())])
  np.testing.assert_array_equal(keys.contains(qu, qi), truth)
  np.testing.assert_array_equal(bitmap.contains(qu, qi), truth)
  # The largest key, and keys beyond every stored one, are answered right.
  np.testing.assert_array_equal(keys.contains(np.array([299]), np.array([199])),
                                bitmap.contains(np.array([299]), np.array([199])))
