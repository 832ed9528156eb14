"""Row sharding across meshes, on one device: tables drawn by global row index (`row_init`),
routed full ranking against a NumPy reference, digests verified across paddings. The checks
on meshes of forced devices are in `row_sharded_mesh_checks.py` (run by test_many_devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncf_jax import evaluation
from ncf_jax import models
from ncf_jax import row_init
from ncf_jax import run_settings
from ncf_jax import shard_digests
from ncf_jax.errors import NonFiniteError
from row_sharded_meshes_shared import (NUM_ITEMS, NUM_USERS, exact_params, metrics, mf_config,
                                       ranking_problem, reference_ranks)


@pytest.mark.parametrize('shape,block', [((1000, 8), 4096), ((5000, 3), 1024), ((130, 64), 64)])
def test_row_init_draws_what_jax_random_normal_draws_at_any_row_range(shape, block):
  key = jax.random.key(3)
  expected = np.asarray(jax.random.normal(key, shape) * jnp.asarray(0.01, jnp.float32))
  rows, width = shape
  whole = row_init.table_rows(key, 0, rows, width, rows, 0.01, block_rows=block)
  np.testing.assert_array_equal(np.asarray(whole), expected)  # bit for bit
  # As Flax initialises a whole table (one compiled program per shape).
  init = row_init.initializer(rows, 0.01, row_sharded=False, axis=row_init.AXIS)
  np.testing.assert_array_equal(np.asarray(init(key, shape)), expected)
  part = jax.jit(lambda k: row_init.table_rows(k, 17, rows - 40, width, rows - 30, 0.01,
                                               block_rows=block))(key)
  np.testing.assert_array_equal(np.asarray(part)[:rows - 47], expected[17:rows - 30])
  assert not np.asarray(part)[rows - 47:].any()  # rows from the real count on: zero


def test_row_counters_cross_the_32_bit_boundary():
  first = 100_000_000 - 3  # x 128 columns: beyond 2**32
  hi, lo = jax.jit(row_init._counters, static_argnums=(1, 2))(jnp.int32(first), 6, 128)
  flat = (np.arange(first, first + 6, dtype=np.uint64)[:, None] * 128
          + np.arange(128, dtype=np.uint64))
  got = np.asarray(hi).astype(np.uint64) << np.uint64(32) | np.asarray(lo).astype(np.uint64)
  np.testing.assert_array_equal(got, flat)


def _evaluator(model, problem, layout=None):
  heldout, known_users, known_items = problem
  return evaluation.FullRankingEvaluator(model, heldout, known_users, known_items, NUM_ITEMS,
                                         max_block_elements=2**14, layout=layout)


def test_routed_full_ranking_on_one_device_equals_numpy_and_replicated_and_is_not_fooled():
  problem = ranking_problem()
  rows_model = models.create_model(run_settings.model_settings(mf_config('rows')), NUM_USERS,
                                   NUM_ITEMS)
  plain_model = models.create_model(run_settings.model_settings(mf_config('replicated')),
                                    NUM_USERS, NUM_ITEMS)
  assert rows_model.table_specs()[0].shape[0] == 1024  # padded: padding must never count
  params = exact_params(rows_model)
  expected = reference_ranks(params, *problem)
  routed = _evaluator(rows_model, problem)
  np.testing.assert_array_equal(routed.user_ranks(params), expected)
  unpadded = jax.tree_util.tree_map(lambda x: x, params)
  for spec in plain_model.table_specs():
    unpadded['mf'][spec.path[-1]] = params['mf'][spec.path[-1]][:spec.rows]
  np.testing.assert_array_equal(_evaluator(plain_model, problem).user_ranks(unpadded), expected)
  result = routed(params, 10)
  assert (result['hr'], result['ndcg']) == pytest.approx(metrics(expected), abs=1e-12)
  # A constant model ranks every held-out item last: HR = 0.
  constant = jax.tree_util.tree_map(np.zeros_like, params)
  assert routed(constant, 10)['hr'] == 0.0
  # A non-finite score of a real item is an error; padding rows are never scored.
  broken = jax.tree_util.tree_map(np.copy, params)
  broken['mf']['item_embedding'][NUM_ITEMS - 1, 0] = np.nan
  with pytest.raises(NonFiniteError):
    routed(broken, 10)
  padded_nan = jax.tree_util.tree_map(np.copy, params)
  padded_nan['mf']['item_embedding'][NUM_ITEMS:] = np.nan
  np.testing.assert_array_equal(routed.user_ranks(padded_nan), expected)


def _copies(name, array, pieces):
  """HostRows of `array` held as [(start, stop)] pieces."""
  return [shard_digests.HostRows(name, array.dtype, array.shape,
                                 [(a, b, array[a:b]) for a, b in pieces])]


def test_digests_of_one_padding_verify_another_padding_on_real_rows():
  rng = np.random.default_rng(0)
  real = 900
  written = np.zeros((3072, 4), np.float32)  # e.g. lcm(1024, 6) padding, 6 shards
  written[:real] = rng.standard_normal((real, 4))
  record = shard_digests.digest(_copies('t', written, [(a, a + 512) for a in range(0, 3072, 512)]))
  for rows in (3072, 4096, 2560, 1024):  # the same, more and fewer padding rows
    reader = np.zeros((rows, 4), np.float32)
    reader[:real] = written[:real]
    copies = _copies('t', reader, [(a, min(a + 128, rows)) for a in range(0, rows, 128)])
    assert shard_digests.first_mismatch(record, copies, {'t': real}) is None, rows
    if rows != 3072:  # without being told the real rows: a different array
      assert ('do not cover' if rows > 3072 else 'cover 3072 rows, not') in \
          shard_digests.first_mismatch(record, copies)
  damaged = np.zeros((1024, 4), np.float32)
  damaged[:real] = written[:real]
  damaged[real - 1, 2] += 1  # a real row differs
  assert shard_digests.first_mismatch(record, _copies('t', damaged, [(0, 1024)]),
                                      {'t': real}) == 't rows 512..1023'
  assert shard_digests.first_mismatch(record, _copies('t', written[:1024].copy(), [(0, 1024)]),
                                      {'t': 1100}) is not None  # would drop real rows
  dirty = written.copy()
  dirty[3000] = 1  # a padding row that was not zero when written: the record says so
  dirty_record = shard_digests.digest(_copies('t', dirty, [(0, 3072)]))
  assert shard_digests.first_mismatch(dirty_record, _copies('t', written[:1024].copy(),
                                                            [(0, 1024)]), {'t': real})
