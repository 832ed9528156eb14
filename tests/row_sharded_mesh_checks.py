"""Row sharding across meshes on forced CPU devices (run by test_many_devices.py in one
process of 8; skipped on fewer): full ranking under `rows` without gathering a table, equal
to a NumPy reference on 3 and 4 devices; tables initialised to the same numbers on any
mesh with no whole-table temporaries; states moved between meshes of different padding
(8 devices: 1,024-row multiples; 6: 3,072) and from 8 devices onto one."""

import shutil

import flax
import jax
from jax.sharding import Mesh
import numpy as np
import pytest

from conftest import make_config, train_quietly
from ncf_jax import checkpoints
from ncf_jax import communication
from ncf_jax import evaluation
from ncf_jax import kept_programs
from ncf_jax import models
from ncf_jax import row_sharded
from ncf_jax import run_settings
from ncf_jax import sharding
from ncf_jax import train
from ncf_jax import trained_run
from ncf_jax.data import registry
from ncf_jax.data.dataset import HeldOut
from ncf_jax.errors import NonFiniteError
from row_sharded_meshes_shared import (NUM_ITEMS, NUM_USERS, exact_params, metrics, mf_config,
                                       ranking_problem, reference_ranks)

pytestmark = pytest.mark.skipif(jax.device_count() < 8,
                                reason='run by tests/test_row_sharded_meshes.py on 8 devices')


def _layout(num_devices: int, embedding_sharding: str = 'rows') -> sharding.Layout:
  return sharding.Layout(Mesh(np.array(jax.devices()[:num_devices]), (sharding.DATA,)),
                         embedding_sharding)


def _placed(params, model, layout):
  shardings = layout.state_shardings(models.abstract_params(model), model.table_specs())
  return jax.device_put(params, shardings)


def _full_ranking(model, layout, problem, max_block_elements=2**14):
  heldout, known_users, known_items = problem
  return evaluation.FullRankingEvaluator(model, heldout, known_users, known_items,
                                         model.num_items, layout=layout,
                                         max_block_elements=max_block_elements)


def test_full_ranking_under_rows_equals_numpy_on_3_and_4_devices_and_is_not_fooled():
  # (One device: test_row_sharded_meshes.py.)
  problem = ranking_problem()
  for num_devices in (3, 4):
    layout = _layout(num_devices)
    model = models.create_model(run_settings.model_settings(mf_config('rows')), NUM_USERS,
                                NUM_ITEMS, num_devices)
    params = exact_params(model)  # the same real rows whatever the padding
    expected = reference_ranks(params, *problem)
    evaluator = _full_ranking(model, layout, problem)
    placed = _placed(params, model, layout)
    np.testing.assert_array_equal(evaluator.user_ranks(placed), expected, str(num_devices))
    result = evaluator(placed, 10)
    assert (result['hr'], result['ndcg']) == pytest.approx(metrics(expected), abs=1e-12)
    if num_devices == 4:
      constant = _placed(jax.tree_util.tree_map(np.zeros_like, params), model, layout)
      assert evaluator(constant, 10)['hr'] == 0.0  # every tie counts against it
      broken = jax.tree_util.tree_map(np.copy, params)
      broken['mf']['user_embedding'][NUM_USERS - 1, 1] = np.nan
      with pytest.raises(NonFiniteError):
        evaluator(_placed(broken, model, layout), 10)


def test_neumf_full_ranking_under_rows_on_4_devices_ranks_as_replicated_on_one():
  problem = ranking_problem(1)
  config = make_config(model='neumf', embedding_sharding='rows')
  ranks = []
  for embedding_sharding, num_devices in (('replicated', 1), ('rows', 4)):
    config.embedding_sharding = embedding_sharding
    model = models.create_model(run_settings.model_settings(config), NUM_USERS, NUM_ITEMS,
                                num_devices)
    layout = _layout(num_devices, embedding_sharding)
    params = jax.tree_util.tree_map(lambda x: x * 30, models.init_params(model, 1))
    ranks.append(_full_ranking(model, layout, problem).user_ranks(
        _placed(params, model, layout)))
  assert (ranks[0] != ranks[1]).sum() <= 2  # a near-tie may flip with another matmul shape


def test_compiled_full_ranking_under_rows_routes_ids_and_gathers_no_table():
  # Compile only: tables of 40,960 x 20,480 rows, 64 held-out users.
  config = make_config(model='neumf', embedding_sharding='rows')
  model = models.create_model(run_settings.model_settings(config), 40_000, 20_000, 4)
  layout = _layout(4)
  rng = np.random.default_rng(0)
  heldout = HeldOut(rng.integers(0, 40_000, 64).astype(np.int32),
                    rng.integers(0, 20_000, 64).astype(np.int32), np.zeros((64, 1), np.int32))
  problem = (heldout, rng.integers(0, 40_000, 500).astype(np.int32),
             rng.integers(0, 20_000, 500).astype(np.int32))
  evaluator = _full_ranking(model, layout, problem, max_block_elements=2**25)
  shardings = layout.state_shardings(models.abstract_params(model), model.table_specs())
  abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                                      sharding=s),
                                    models.abstract_params(model), shardings)
  listed = communication.collectives(evaluator.lower(abstract).compile().as_text())
  assert any(c['kind'] == 'all-to-all' for c in listed), listed
  smallest_shard = min(s.shape[0] // 4 * s.width * 4 for s in model.table_specs())
  assert all(c['bytes'] < smallest_shard / 4 for c in listed), (listed, smallest_shard)


def test_tables_are_drawn_alike_on_any_mesh_without_whole_table_temporaries():
  config = make_config(model='neumf', embedding_sharding='rows', batch_size=96)
  tables = {}
  for num_devices in (1, 3, 4):
    config.num_devices = num_devices
    experiment = train.build(run_settings.read(config))
    state = train.initial_state(experiment)
    flat = flax.traverse_util.flatten_dict(state['params'])
    tables[num_devices] = {s.path: (np.asarray(flat[s.path]), s.rows)
                           for s in experiment.model.table_specs()}
    if num_devices == 1:  # as drawn eagerly, unpadded, before tables were drawn by row
      plain = models.create_model(run_settings.model_settings(make_config(model='neumf')),
                                  experiment.model.num_users, experiment.model.num_items)
      eager = flax.traverse_util.flatten_dict(models.init_params(plain, config.seed))
  for path, (table, rows) in tables[4].items():
    np.testing.assert_array_equal(table, tables[1][path][0])  # same padding: all rows
    np.testing.assert_array_equal(table[:rows], tables[3][path][0][:rows])
    np.testing.assert_array_equal(table[:rows], np.asarray(eager[path]))
    assert not tables[3][path][0][rows:].any() and not table[rows:].any()
  # Compiled, not run: 400,000 x 16 user rows over 4 devices, drawn per device in blocks.
  config = make_config(model='gmf', num_factors=16, embedding_sharding='rows')
  model = models.create_model(run_settings.model_settings(config), 400_000, 1000, 4)
  layout = _layout(4)
  shardings = layout.state_shardings(models.abstract_params(model), model.table_specs())
  init = jax.jit(lambda: models.init_params(model, 0), out_shardings=shardings)
  with jax.set_mesh(layout.mesh):
    temp = init.lower().compile().memory_analysis().temp_size_in_bytes
  shard = model.table_specs()[0].shard_rows(4) * 16 * 4
  assert temp < shard / 4, (temp, shard)


def _restored_on(workdir, num_devices, config):
  """The newest checkpoint of `workdir` restored onto `num_devices` devices (re-padded)."""
  config.num_devices = num_devices
  experiment = train.build(run_settings.read(config))
  directory = checkpoints.CheckpointDir(str(workdir / 'checkpoints' / 'latest'))
  try:
    epoch = directory.epochs()[-1]
    state, _ = directory.restore(epoch, experiment.abstract_state(),
                                 tables=experiment.model.table_specs())
  finally:
    directory.close()
  return state, experiment.model


def _real_rows(state, model):
  flat = flax.traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, state['params']))
  return {s.path: flat[s.path] for s in model.table_specs()}, {
      s.path: s.rows for s in model.table_specs()}


def test_a_state_moves_between_meshes_of_different_padding(tmp_path, monkeypatch):
  # 5 positives a user: 50 steps an epoch (each a few all-to-alls among threads on 2 cores).
  # Local batches of 6 (8 devices) and 8 (6) fit the fast capacity: no overflow branch to
  # compile (both paths: multi_device_checks.py).
  config = lambda devices, epochs: make_config(num_devices=devices, num_epochs=epochs,
                                               batch_size=48, embedding_sharding='rows',
                                               optimizer='lazy_adam',
                                               synthetic=dict(interactions_per_user=5))
  eight, _ = train_quietly(config(8, 1), tmp_path / 'eight')  # padded to 1,024 rows
  traces = []
  make_step = row_sharded.make_local_step  # called once per trace of the chunk
  monkeypatch.setattr(row_sharded, 'make_local_step', lambda *a: traces.append(1) or make_step(*a))
  kept_programs.forget()  # so the run builds (and traces) its own chunk
  six, six_history = train_quietly(config(6, 2), tmp_path / 'six')  # to 3,072
  monkeypatch.undo()
  # One compilation for the run (chunks of 4 steps and a short last one); every record says
  # where it ran; padding rows are never looked up, so never moved.
  assert len(traces) == 1
  assert all(r['devices'] == 6 and r['processes'] == 1 for r in six_history)
  dataset = registry.load_dataset(run_settings.data_settings(config(6, 1)))
  for spec in models.create_model(run_settings.model_settings(config(6, 1)), dataset.num_users,
                                  dataset.num_items, 6).table_specs():
    table = np.asarray(flax.traverse_util.flatten_dict(six['params'])[spec.path])
    assert table.shape[0] == 3072 and table[:spec.rows].any() and not table[spec.rows:].any()
  for source, state, target in ((tmp_path / 'eight', eight, 6), (tmp_path / 'six', six, 8)):
    restored, model = _restored_on(source, target, config(target, 1))
    written, _ = _real_rows(state, model)
    got, rows = _real_rows(restored, model)
    specs = {s.path: s for s in model.table_specs()}
    for path, table in got.items():  # the target's padding (1,024 <-> 3,072 rows)
      assert table.shape[0] == specs[path].shape[0] != written[path].shape[0]
      np.testing.assert_array_equal(table[:rows[path]], written[path][:rows[path]])
      assert not table[rows[path]:].any()
    # Adam's moments of the tables too.
    moments = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(restored['opt_state'])
               if 'user_embedding' in jax.tree_util.keystr(path)]
    assert moments and all(m.shape[0] == model.table_specs()[0].shape[0] for m in moments)
  # A reader on one device (1,024-row padding) of the run written on 6 (3,072).
  sized = trained_run.load_best(str(tmp_path / 'six'), dataset.num_users, dataset.num_items)
  as_stored = trained_run.load_best(str(tmp_path / 'six'))  # tables of the stored 3,072 rows
  for spec in sized.model.table_specs():
    table, stored = (flax.traverse_util.flatten_dict(p)[spec.path]
                     for p in (sized.params, as_stored.params))
    assert table.shape[0] == 1024 and stored.shape[0] == 3072
    np.testing.assert_array_equal(np.asarray(table)[:spec.rows], np.asarray(stored)[:spec.rows])
  # Epoch 2 on 6 devices, or on one, after epoch 1 on 8 = the run on 6 all along (same
  # batches; the summed gradients differ only in reduction order).
  for devices in (6, 1):
    resumed = tmp_path / f'resumed_on_{devices}'
    shutil.copytree(tmp_path / 'eight', resumed)
    _, history = train_quietly(config(devices, 2), resumed)
    assert [r['devices'] for r in history] == [8, 8, devices]
    assert history[-1]['loss'] == pytest.approx(six_history[-1]['loss'], rel=1e-4)
    assert abs(history[-1]['hr'] - six_history[-1]['hr']) <= 3 / len(dataset.test)
