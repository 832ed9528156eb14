"""Table specifications, id routing and the HLO reader on one device (the 8-device checks
of row sharding are in multi_device_checks.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from conftest import make_config
from ncf_jax import communication
from ncf_jax import models
from ncf_jax import row_sharded
from ncf_jax import run_settings
from ncf_jax import tables


def test_padding_rule_on_power_of_two_and_other_device_counts():
  spec = tables.TableSpec(('gmf', 'user_embedding'), 'users', 6040, 8)
  padded = lambda devices: tables.plan([spec], 'rows', devices)[0].shape[0]
  assert [padded(n) for n in (1, 2, 8, 64)] == [6144] * 4  # 6 x 1024
  assert padded(6) == 6144 and padded(6) % 6 == 0  # lcm(1024, 6) = 3072
  assert padded(12) == 6144 and padded(5) == 10240  # lcm: 3072 and 5120
  assert tables.plan([spec], 'replicated', 8)[0].shape == (6040, 8)


def test_the_models_parameters_are_what_their_specs_say():
  config = make_config(model='mf', embedding_sharding='rows', num_factors=5)
  model = models.create_model(run_settings.model_settings(config), 37, 2000, 4)
  ids = jnp.zeros((1,), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids)['params'])['mf']
  assert params['user_embedding'].shape == (1024, 5)
  assert params['item_bias'].shape == (2048, 1)
  specs = {s.path[-1]: s for s in model.table_specs()}
  assert specs['user_bias'].stddev == 0 and specs['item_embedding'].stddev == 0.01
  assert {s.ids for s in specs.values()} == {'users', 'items'}


def test_route_buckets_each_id_at_its_owner_in_batch_order():
  ids = np.array([5, 0, 9, 5, 3, 11, 1, 8], np.int32)
  owner, slot, counts = jax.jit(row_sharded.route, static_argnums=(1, 2))(jnp.asarray(ids), 4, 3)
  expected_owner, expected_slot, seen = [], [], {}
  for i in ids:  # a plain loop
    expected_owner.append(i // 4)
    expected_slot.append(seen.get(i // 4, 0))
    seen[i // 4] = seen.get(i // 4, 0) + 1
  assert owner.tolist() == expected_owner and slot.tolist() == expected_slot
  assert counts.tolist() == [seen.get(d, 0) for d in range(3)]


def test_capacity_is_twice_a_uniform_share_in_multiples_of_8_and_at_most_the_batch():
  assert row_sharded.capacity(16384, 4) == 8192
  assert row_sharded.capacity(100, 8) == 32  # ceil(200 / 8) = 25, rounded up to 32
  assert row_sharded.capacity(64, 1) == 64 and row_sharded.capacity(64, 2) == 64


def test_the_hlo_reader_counts_operand_bytes_and_branches():
  hlo = '\n'.join([
      '%a2a = (s32[1,8]{1,0}, s32[1,8]{1,0}) all-to-all(%x, %y), channel_id=1, '
      'replica_groups={{0,1}}, metadata={op_name="jit(f)/shard_map/cond/branch_0_fun/all_to_all"}',
      '%ag = bf16[8,4]{1,0} all-gather(%z), replica_groups={{0,1}}, dimensions={0}',
      '%ar = f32[3]{0} all-reduce-start(%w), replica_groups={{0,1}}, to_apply=%add, '
      'metadata={op_name="jit(f)/shard_map/cond/branch_1_fun/psum"}',
      '%ard = f32[3]{0} all-reduce-done(%ar)',
      '%add.1 = f32[3]{0} add(%p, %q)'])
  listed = communication.collectives(hlo)
  assert [(c['kind'], c['bytes'], c['path']) for c in listed] == [
      ('all-to-all', 64, 'fast'), ('all-gather', 32, 'always'), ('all-reduce', 12, 'fallback')]
  assert communication.summarize(listed) == dict(
      collective_bytes_per_step_per_device=96, fallback_collective_bytes_per_step_per_device=44)


def test_a_row_sharded_step_on_one_device_equals_the_plain_step():
  config = make_config(model='neumf', optimizer='lazy_adam', embedding_sharding='rows')
  from ncf_jax import optimizers, sharding, train_step
  model = models.create_model(run_settings.model_settings(config), 50, 40)
  optimizer = optimizers.create_optimizer(run_settings.optimizer_settings(config))
  ids = jnp.zeros((1,), jnp.int32)
  params = model.init(jax.random.key(0), ids, ids)['params']
  rng = np.random.default_rng(0)
  batch = dict(users=rng.integers(0, 50, (2, 32)).astype(np.int32),
               items=rng.integers(0, 40, (2, 32)).astype(np.int32),
               labels=rng.integers(0, 2, (2, 32)).astype(np.float32),
               weights=np.ones((2, 32), np.float32))
  layout = sharding.single_device_layout()
  shardings = layout.state_shardings(train_step.abstract_state(model, optimizer),
                                     model.table_specs())
  regularization = run_settings.regularization(config)
  results = []
  for make in (train_step.make_train_chunk, row_sharded.make_train_chunk):
    state = train_step.init_state(jax.tree_util.tree_map(jnp.copy, params), optimizer, model)
    state, _ = make(model, optimizer, regularization, layout, shardings)(
        state, layout.put_chunk(batch), np.int32(2))
    results.append(jax.tree_util.tree_leaves(state['params']))
  for plain, routed in zip(*results):
    np.testing.assert_allclose(np.asarray(routed), np.asarray(plain), rtol=1e-6, atol=1e-9)


def test_the_program_reader_finds_all_to_all_element_types():
  text = ('%1 = "stablehlo.all_to_all"(%0) <{split_count = 8 : i64}> : (tensor<8x32xi32>) -> '
          'tensor<8x32xi32>\n%2 = "stablehlo.all_to_all"(%1) <{}> : (tensor<8x32x16xbf16>) -> '
          'tensor<8x32x16xbf16>\n%3 = stablehlo.add %1, %1 : tensor<8x32xi32>')
  assert communication.program_all_to_all_types(text) == ['i32', 'bf16']


def test_a_padded_table_starts_with_the_rows_an_unpadded_one_draws_and_zeros():
  config = make_config(model='gmf', num_factors=3)
  ids = jnp.zeros((1,), jnp.int32)
  draw = lambda sharding_: models.create_model(run_settings.model_settings(
      _with(config, sharding_)),
      1000, 7).init(jax.random.key(5), ids, ids)['params']['gmf']['user_embedding']
  plain, padded = np.asarray(draw('replicated')), np.asarray(draw('rows'))
  assert plain.shape == (1000, 3) and padded.shape == (1024, 3)
  np.testing.assert_array_equal(padded[:1000], plain)
  assert not padded[1000:].any()


def _with(config, embedding_sharding):
  config = config.copy_and_resolve_references()
  config.embedding_sharding = embedding_sharding
  return config


def test_a_run_under_auto_records_the_setting_and_names_each_tables_placement(tmp_path):
  import contextlib
  import io
  import json
  from ncf_jax import train
  config = make_config(embedding_sharding='auto', num_epochs=1)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    train.train_and_evaluate(config, str(tmp_path))
  assert json.loads((tmp_path / 'config.json').read_text())['embedding_sharding'] == 'auto'
  line = out.getvalue().splitlines()[1]
  assert line.startswith('embedding_sharding=auto: tables: gmf/user_embedding ')
  assert 'replicated' in line and 'rows' not in line.replace('embedding_sharding', '')
