"""Checks that need 8 devices. `tests/test_many_devices.py` runs this file in a pytest process
of 8 forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, which must be set
before JAX starts); collected in a 1-device process, every check here is skipped.

Forced CPU devices share the machine's cores: they test what is computed and where arrays
live, never speed.
"""

import copy

import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from conftest import make_config
import test_batch_source
from ncf_jax import batch_source
from ncf_jax import communication
from ncf_jax import evaluation
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import row_sharded
from ncf_jax import run_settings
from ncf_jax import sharding
from ncf_jax import tables
from ncf_jax import train
from ncf_jax import train_step as train_step_lib
from ncf_jax.data import registry
from ncf_jax.errors import ConfigError

pytestmark = pytest.mark.skipif(jax.device_count() < 8,
                                reason='run by tests/test_many_devices.py on 8 forced devices')

NUM_USERS, NUM_ITEMS = 150, 90


def _layout(num_devices, embedding_sharding):
  config = make_config(num_devices=num_devices, embedding_sharding=embedding_sharding)
  return sharding.create_layout(config.num_devices, config.batch_size, embedding_sharding)


def _shardings(layout, model, optimizer):
  abstract = train_step_lib.abstract_state(model, optimizer)
  return layout.state_shardings(abstract, model.table_specs())


def _batches(steps=10, batch=64, seed=0, max_user=NUM_USERS):
  rng = np.random.default_rng(seed)
  return dict(users=rng.integers(0, max_user, (steps, batch)).astype(np.int32),
              items=rng.integers(0, NUM_ITEMS, (steps, batch)).astype(np.int32),
              labels=rng.integers(0, 2, (steps, batch)).astype(np.float32),
              weights=np.ones((steps, batch), np.float32))


def _experiment(config, num_devices=0):
  """What `train.build` makes of `config` on synthetic data of NUM_USERS x NUM_ITEMS."""
  config = copy.deepcopy(config)
  config.num_devices = num_devices
  config.synthetic.update(num_users=NUM_USERS, num_items=NUM_ITEMS)
  return train.build(run_settings.read(config))


def _train_on(num_devices, config, params, batches):
  """(state after the chunk, its layout) of `batches` on `num_devices` devices, with the
  model, optimizer, layout and state shardings of `train.build`."""
  experiment = _experiment(config, num_devices)
  model, optimizer, layout = experiment.model, experiment.optimizer, experiment.layout
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, experiment.abstract_state())
  state = jax.device_put(train_step_lib.init_state(params, optimizer, model), shardings)
  # As train's epoch loop chooses it: routed under shard_map when a table is row-sharded.
  make_chunk = (row_sharded.make_train_chunk if row_sharded.has_row_sharded(model.table_specs())
                else train_step_lib.make_train_chunk)
  chunk = make_chunk(model, optimizer, experiment.regularization, layout, shardings)
  state, _ = chunk(state, layout.put_chunk(batches), np.int32(len(batches['users'])))
  assert layout.num_devices == num_devices
  return state, layout


# Replicated tables with a dense and a row-sparse optimizer (row-sharded tables, both kinds:
# test_rows_on_8_and_4_devices_trains_as_replicated_on_one_fast_path_and_fallback).
CASES = [('replicated', 'adam', 'neumf'), ('replicated', 'lazy_sgd', 'mf')]


@pytest.mark.parametrize('embedding_sharding,optimizer,model_name', CASES)
def test_the_same_global_batches_give_the_same_parameters_on_1_and_8_devices(
    embedding_sharding, optimizer, model_name):
  # Adam at the paper's rate: a summed gradient that nearly cancels differs in its last bits
  # with the reduction order, and Adam's normalisation turns that into a step-sized change
  # (at 0.05 up to 5e-5 of a table's largest entry after 10 steps; at 0.001, 3e-7).
  config = make_config(model=model_name, optimizer=optimizer,
                       learning_rate=0.05 if optimizer == 'lazy_sgd' else 0.001,
                       embedding_sharding=embedding_sharding,
                       l2_embeddings_per_example=optimizer == 'lazy_sgd')
  model = _experiment(config, 1).model
  ids = jnp.zeros((1,), jnp.int32)
  # On the host: each run lays out (and donates) its own copy.
  params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.key(0), ids, ids)['params'])
  batches = _batches()
  reference, _ = _train_on(1, config, params, batches)
  state, layout = _train_on(8, config, params, batches)
  for ref, got in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(state)):
    scale = max(float(np.abs(np.asarray(ref)).max()), 1e-30)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0, atol=1e-5 * scale)
  _assert_placed(state, model, layout, 8)
  assert layout.put_chunk(batches)['users'].sharding.spec == P(None, sharding.DATA)


def _assert_placed(state, model, layout, num_devices):
  """Every table of `state` whole on each device (replicated) or a 1/num_devices block of
  its rows on each (`rows`)."""
  flat = flax.traverse_util.flatten_dict(state['params'])
  for spec in model.table_specs():
    table = flat[spec.path]
    by_rows = layout.embedding_sharding == 'rows'
    assert table.sharding.spec == (P(sharding.DATA, None) if by_rows else P())
    rows = {shard.data.shape[0] for shard in table.addressable_shards}
    assert rows == ({table.shape[0] // num_devices} if by_rows else {table.shape[0]})


@pytest.mark.parametrize('sampler', batch_source.SAMPLERS)
def test_either_executor_makes_the_same_batches_on_1_and_4_devices(sampler):
  # (On one device, against the epoch laid out by hand: tests/test_batch_source.py.)
  spec, arrays = test_batch_source._definition()
  got = []
  for devices in (1, 4):
    source = batch_source.create(sampler, spec, arrays, 3, 64, 2,
                                 test_batch_source._layout(devices))
    try:
      got.append(test_batch_source.epoch_batches(source, 1))
    finally:
      source.close()
  for name in test_batch_source.NAMES:
    np.testing.assert_array_equal(got[0][name], got[1][name], err_msg=name)


def test_row_sharded_tables_take_an_eighth_of_the_memory_per_device():
  config = make_config(model='neumf', embedding_sharding='rows', num_factors=16)
  for embedding_sharding in ('replicated', 'rows'):
    config.embedding_sharding = embedding_sharding
    model = models.create_model(run_settings.model_settings(config), 6040, 3706)  # ML-1M's tables
    optimizer = optimizers.create_optimizer(run_settings.optimizer_settings(config))
    layout = _layout(8, embedding_sharding)
    ids = jnp.zeros((1,), jnp.int32)
    shardings = _shardings(layout, model, optimizer)['params']
    params = jax.jit(lambda: model.init(jax.random.key(0), ids, ids)['params'],
                     out_shardings=shardings)()
    per_device = layout.table_bytes_per_device(params, model.table_specs())
    if embedding_sharding == 'replicated':
      replicated = per_device
  one_block = tables.ROW_MULTIPLE * (16 + 64) * 4 * 2  # a block of rows of every table
  assert per_device <= replicated / 8 + one_block
  assert per_device < replicated / 4


@pytest.mark.parametrize('embedding_sharding', ['replicated', 'rows'])
def test_evaluation_over_8_devices_ranks_as_on_one(embedding_sharding):
  config = make_config(embedding_sharding=embedding_sharding)
  dataset = registry.load_dataset(run_settings.data_settings(config))
  model = models.create_model(run_settings.model_settings(config), dataset.num_users,
                              dataset.num_items)
  ids = jnp.zeros((1,), jnp.int32)
  params = jax.tree_util.tree_map(lambda x: x * 30,
                                  model.init(jax.random.key(1), ids, ids)['params'])
  results = []
  for num_devices in (1, 8):
    layout = _layout(num_devices, embedding_sharding)
    optimizer = optimizers.create_optimizer(run_settings.optimizer_settings(config))
    shardings = _shardings(layout, model, optimizer)['params']
    placed = jax.device_put(params, shardings)
    sampled = evaluation.SampledEvaluator(model, dataset.test, 16, layout=layout)
    full = evaluation.full_ranking_evaluator(model, dataset, layout)
    results.append([np.asarray(e.ranks(placed)[0])[:len(dataset.test)] for e in (sampled, full)])
    if embedding_sharding == 'rows' and num_devices == 8:  # ids routed, no table gathered
      hlo = sampled._ranks.lower(placed, sampled._users, sampled._candidates, sampled._counted,
                                 sampled._real).compile().as_text()
      listed = communication.collectives(hlo)
      assert any(c['kind'] == 'all-to-all' for c in listed)
      table_shard = min(s.shape[0] // 8 * s.width * 4 for s in model.table_specs())
      ranks_bytes = 4 * sampled._users.size
      assert all(c['bytes'] <= ranks_bytes < table_shard for c in listed
                 if c['kind'] != 'all-to-all'), (listed, table_shard)
  for one, eight in zip(*results):
    assert (one != eight).sum() <= 3  # near-ties may flip with another reduction order


def test_device_count_follows_the_batch_or_the_config():
  assert sharding.num_devices_for(0, 256, 8) == 8
  assert sharding.num_devices_for(0, 12, 8) == 6  # the most devices that divide the batch
  assert sharding.num_devices_for(4, 256, 8) == 4
  with pytest.raises(ConfigError, match='config.num_devices=3 does not divide'):
    sharding.num_devices_for(3, 256, 8)
  with pytest.raises(ConfigError, match='only 8 devices'):
    sharding.num_devices_for(16, 256, 8)
  layout = train.build(run_settings.read(make_config(batch_size=96))).layout
  assert layout.num_devices == 8


def _unpadded(params, model):
  """Params with every table cut to its real rows (a padded and an unpadded run compared)."""
  flat = flax.traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, params))
  for spec in model.table_specs():
    flat[spec.path] = flat[spec.path][:spec.rows]
  return flat


def _owner_counts(ids, num_devices, shard_rows):
  """The most ids one device's slice of a batch sends to one owner (a plain loop)."""
  worst = 0
  for local in np.split(ids, num_devices):
    counts = {}
    for i in local:
      counts[i // shard_rows] = counts.get(i // shard_rows, 0) + 1
    worst = max(worst, max(counts.values()))
  return worst


@pytest.mark.parametrize('optimizer', ['adam', 'lazy_adam'])
def test_rows_on_8_and_4_devices_trains_as_replicated_on_one_fast_path_and_fallback(optimizer):
  num_users = num_items = 1000  # padded to 1,024: 128 rows per device
  config = make_config(model='neumf', optimizer=optimizer, learning_rate=0.001)
  replicated_model = models.create_model(run_settings.model_settings(config), num_users, num_items)
  ids = jnp.zeros((1,), jnp.int32)
  params = jax.tree_util.tree_map(
      np.asarray, replicated_model.init(jax.random.key(0), ids, ids)['params'])
  rng = np.random.default_rng(0)
  spread = dict(users=rng.integers(0, num_users, (4, 1024)), items=rng.integers(0, num_items,
                                                                              (4, 1024)))
  # Every id below 128: all of a device's ids go to device 0, beyond any bucket's capacity.
  skewed = dict(users=rng.integers(0, 128, (4, 1024)), items=rng.integers(0, 128, (4, 1024)))
  capacity = row_sharded.capacity(1024 // 8, 8)
  assert max(_owner_counts(s, 8, 128) for s in spread['users']) <= capacity  # the fast path
  assert min(_owner_counts(s, 8, 128) for s in skewed['users']) > capacity  # the fallback
  runs = []  # (config's sharding, model, layout, chunk, initial state): built once each
  # A second mesh (4: 256 of the 1,024 padded rows per device) for the row-sparse
  # optimizer, the most index arithmetic.
  meshes = [('replicated', 1), ('rows', 8)] + [('rows', 4)] * (optimizer == 'lazy_adam')
  for sharding_, devices in meshes:
    config.embedding_sharding = sharding_
    model = models.create_model(run_settings.model_settings(config), num_users, num_items,
                                devices)
    padded = flax.traverse_util.flatten_dict(params)
    for spec in model.table_specs():
      padded[spec.path] = np.pad(padded[spec.path], ((0, spec.shape[0] - spec.rows), (0, 0)))
    layout = _layout(devices, sharding_)
    optimizer_ = optimizers.create_optimizer(run_settings.optimizer_settings(config))
    shardings = _shardings(layout, model, optimizer_)
    make_chunk = (row_sharded.make_train_chunk if sharding_ == 'rows'
                  else train_step_lib.make_train_chunk)
    chunk = make_chunk(model, optimizer_, run_settings.regularization(config),
                       layout, shardings)
    initial = train_step_lib.init_state(flax.traverse_util.unflatten_dict(padded), optimizer_,
                                        model)
    runs.append((model, layout, chunk, initial, shardings))
  for stream in (spread, skewed):
    batches = dict(users=stream['users'].astype(np.int32), items=stream['items'].astype(np.int32),
                   labels=rng.integers(0, 2, (4, 1024)).astype(np.float32),
                   weights=np.ones((4, 1024), np.float32))
    results = []
    for model, layout, chunk, initial, shardings in runs:
      # A fresh copy each time: the chunk donates its state.
      state = jax.device_put(jax.tree_util.tree_map(np.array, initial), shardings)
      state, metrics = chunk(state, layout.put_chunk(batches), np.int32(4))
      _assert_placed(state, model, layout, layout.num_devices)
      results.append((_unpadded(state['params'], model), float(metrics['loss_sum'])))
    (reference, loss), *sharded = results
    for got, rows_loss in sharded:
      assert rows_loss == pytest.approx(loss, rel=1e-5)
      for path, value in reference.items():
        scale = max(float(np.abs(value).max()), 1e-30)
        np.testing.assert_allclose(got[path], value, rtol=0, atol=1e-5 * scale,
                                   err_msg=str(path))


def test_the_compiled_rows_step_routes_ids_and_moves_no_table():
  config = make_config(model='neumf', optimizer='lazy_adam', embedding_sharding='rows',
                       batch_size=1024, num_factors=8)
  small = communication.measure_train_step(config, 20_000, 10_000, 8)
  large = communication.measure_train_step(config, 200_000, 100_000, 8)
  kinds = {c['kind'] for c in large['collectives']}
  assert 'all-to-all' in kinds and 'all-gather' not in kinds
  smallest_shard = min(t['padded_rows'] // 8 * t['width'] * 4 for t in large['tables'])
  for c in large['collectives']:
    # The only other collectives: the psum of the dense layers' gradients and of scalars.
    assert c['kind'] == 'all-to-all' or c['bytes'] < smallest_shard / 8, c
  assert (small['collective_bytes_per_step_per_device']
          == large['collective_bytes_per_step_per_device'])
  assert large['table_bytes_per_device'] * 8 == large['padded_table_bytes']
  assert large['table_and_optimizer_bytes_per_device'] == 3 * large['table_bytes_per_device']


def test_bfloat16_rows_cross_devices_in_bfloat16():
  # Read from the program JAX hands XLA: the CPU compiler then widens bfloat16 collectives.
  config = make_config(model='gmf', optimizer='lazy_adam', embedding_sharding='rows',
                       batch_size=1024, num_factors=16, compute_dtype='bfloat16')
  lowered = communication.lower_train_step(config, 20_000, 10_000, 8)[0]  # no compilation
  types = communication.program_all_to_all_types(lowered.as_text())
  assert set(types) == {'i32', 'bf16'} and types.count('bf16') == 2 * types.count('i32')


def test_auto_replicates_small_tables_and_shards_large_ones_across_meshes():
  config = make_config(model='gmf', embedding_sharding='auto', num_factors=64)
  big = tables.AUTO_ROWS_MIN_BYTES // (4 * 64)  # rows of a table at the threshold
  settings = run_settings.model_settings(config)
  specs = {s.path: s for s in models.create_model(settings, big, 1000, 8).table_specs()}
  assert specs['gmf', 'user_embedding'].placement == 'rows'
  assert specs['gmf', 'item_embedding'].placement == 'replicated'
  one = {s.path: s for s in models.create_model(settings, big, 1000, 1).table_specs()}
  assert one['gmf', 'user_embedding'].placement == 'replicated'
  # The same padded rows on one device: a state moves between the two.
  assert one['gmf', 'user_embedding'].shape == specs['gmf', 'user_embedding'].shape
