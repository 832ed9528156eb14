"""Initial rows of an embedding table, drawn by their global row index.

A table's initial value at (row r, column c) is what `jax.random.normal(key, (R, W)) * stddev`
gives there: JAX's partitionable Threefry (the default) draws each value from the counter
r * W + c, its row-major index, which neither the number of rows R (so padding rows at the
end shift nothing) nor the device count changes. `normal_rows` computes any block of rows
from those counters directly, so

- a device draws only the rows it owns (`sharded_table`: inside `shard_map`, over the
  mesh that `jax.set_mesh` names), in blocks of `BLOCK_ROWS` rows written into its shard
  in place: no temporary of a table's or a shard's size;
- the values equal `jax.random.normal(key, shape) * stddev` as an unjitted call computes
  them (checked bit for bit in tests): the draw of one device is what it always was, and
  every mesh draws the same numbers. The product with `stddev` is kept apart from
  `normal`'s own `* sqrt(2)` (an optimisation barrier), as it is in the unjitted call:
  inside one jitted program XLA would otherwise fold the two constants into one product
  and round differently.

Rows at or beyond the table's real rows (padding) are zero.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
import numpy as np

from ncf_jax import counter_random

AXIS = 'data'  # the mesh axis row-sharded tables are split over (sharding.DATA)
BLOCK_ROWS = 65536  # rows drawn at a time (a 128-wide block: 32 MiB of float32)
_LOW = np.nextafter(np.float32(-1), np.float32(0))  # jax.random.normal's open interval
_SPAN = np.float32(1) - _LOW


def _counters(first_row, num_rows: int, width: int):
  """(hi, lo) uint32 words of the 64-bit counters (first_row + r) * width + c of a
  (num_rows, width) block, in 32-bit arithmetic (x64 stays off)."""
  if not 0 < width < 2**16:
    raise ValueError(f'table width {width}: must be in [1, 65535]')
  rows = jnp.asarray(first_row).astype(jnp.uint32) + jnp.arange(num_rows, dtype=jnp.uint32)
  w = jnp.uint32(width)
  upper = (rows >> 16) * w  # < 2**31: rows < 2**31, width < 2**16
  lower = (rows & 0xFFFF) * w  # < 2**32
  lo = (upper & 0xFFFF) << 16
  hi = upper >> 16
  total = lo + lower
  hi = hi + (total < lo).astype(jnp.uint32)
  cols = jnp.arange(width, dtype=jnp.uint32)[None, :]
  flat = total[:, None] + cols
  hi = hi[:, None] + (flat < total[:, None]).astype(jnp.uint32)
  return hi, flat


def standard_normal_rows(key, first_row, num_rows: int, width: int) -> jax.Array:
  """Rows [first_row, first_row + num_rows) of `jax.random.normal(key, (R, width))` for
  any R beyond them (float32)."""
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  words = (jax.random.key_data(key) if typed else key).astype(jnp.uint32)
  if words.shape != (2,):  # another PRNG implementation: its draws are not Threefry's
    raise ValueError(f'row_init draws as threefry2x32 keys do; got key data {words.shape}')
  hi, lo = _counters(first_row, num_rows, width)
  x0, x1 = counter_random.threefry2x32(jnp, (words[0], words[1]), hi, lo)
  bits = x0 ^ x1
  floats = lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32)
  uniform = lax.max(jnp.float32(_LOW), (floats - jnp.float32(1)) * _SPAN + _LOW)
  return np.float32(np.sqrt(2)) * lax.erf_inv(uniform)


def normal_rows(key, first_row, num_rows: int, width: int, real_rows: int,
                stddev: float) -> jax.Array:
  """Rows [first_row, first_row + num_rows) of a table whose real rows are N(0, stddev)
  as `jax.random.normal(key, shape) * stddev` draws them, and whose rows from `real_rows`
  on (padding) are zero."""
  if not stddev:
    return jnp.zeros((num_rows, width), jnp.float32)
  values = lax.optimization_barrier(standard_normal_rows(key, first_row, num_rows, width))
  values = values * jnp.asarray(stddev, jnp.float32)
  rows = jnp.asarray(first_row) + jnp.arange(num_rows)
  return jnp.where((rows < real_rows)[:, None], values, jnp.float32(0))


def table_rows(key, first_row, num_rows: int, width: int, real_rows: int, stddev: float,
               block_rows: int = BLOCK_ROWS) -> jax.Array:
  """`normal_rows` drawn `block_rows` at a time into one (num_rows, width) buffer (the last
  block is moved back to end at the last row: it redraws a few rows, to the same values)."""
  if num_rows <= block_rows or not stddev:
    return normal_rows(key, first_row, num_rows, width, real_rows, stddev)

  def body(i, out):
    start = jnp.minimum(i * block_rows, num_rows - block_rows)
    block = normal_rows(key, first_row + start, block_rows, width, real_rows, stddev)
    return lax.dynamic_update_slice_in_dim(out, block, start, axis=0)

  blocks = -(-num_rows // block_rows)
  return lax.fori_loop(0, blocks, body, jnp.zeros((num_rows, width), jnp.float32))


def sharded_table(key, shape: tuple[int, int], real_rows: int, stddev: float,
                  mesh, axis: str) -> jax.Array:
  """The whole table, its rows split over `axis` of `mesh` (`P(axis, None)`), each device
  drawing only its own rows."""
  rows, width = shape
  devices = mesh.shape[axis]
  local = rows // devices

  def draw(key):
    first = lax.axis_index(axis) * local
    return table_rows(key, first, local, width, real_rows, stddev)

  # check_vma off: the loop's zero buffer is the same on every device, its blocks are not.
  return jax.shard_map(draw, mesh=mesh, in_specs=P(), out_specs=P(axis, None),
                       check_vma=False)(key)


def initializer(real_rows: int, stddev: float, row_sharded: bool, axis: str):
  """A Flax initialiser `init(key, shape, dtype)` of a table: drawn by `sharded_table` when
  the table is row-sharded and a mesh with `axis` is set (`jax.set_mesh`), else whole."""

  def init(key, shape, dtype=jnp.float32):
    mesh = jax.sharding.get_abstract_mesh()
    if (row_sharded and not mesh.empty and axis in mesh.axis_names
        and shape[0] % mesh.shape[axis] == 0):
      return _sharded_table(key, tuple(shape), real_rows, stddev, mesh, axis).astype(dtype)
    return _whole_table(key, shape[0], shape[1], real_rows, stddev).astype(dtype)

  return init


# One compiled program per table shape where Flax initialises eagerly (a reader, a test):
# unjitted, each of Threefry's dozens of operations would compile on its own for every
# shape. `jax.random.normal` is itself such a jitted program, so the values are the same.
_whole_table = jax.jit(lambda key, rows, width, real_rows, stddev: table_rows(
    key, 0, rows, width, real_rows, stddev), static_argnums=(1, 2, 3, 4))
# Jitted too where it is traced: Flax checks a parameter's shape at every `apply` by tracing
# its initialiser (`jax.eval_shape`), and a jitted one is traced once per shape and mesh
# (unjitted, each trace of a row-sharded step redrew every table's abstract Threefry).
_sharded_table = jax.jit(sharded_table, static_argnums=(1, 2, 3, 4, 5))
