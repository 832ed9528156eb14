"""Row-wise sharded embedding tables: ids travel to the rows' owners, not tables to the ids.

Under `shard_map` over the `data` axis, each device holds 1/N of every row-sharded table
(contiguous rows: device d owns [d * R/N, (d+1) * R/N)) and of its optimizer moments, and
b = B/N examples of each batch. One lookup:

  1. route: each example's id goes into the bucket of its owner, at the next free slot;
     buckets are a fixed (N, C) array of local row numbers (empty slots: an out-of-range row);
  2. all-to-all the (N, C) ids: each owner receives the ids the others need from it;
  3. the owner gathers those rows locally and casts them to the compute dtype;
  4. all-to-all the (N, C, W) rows back; each example reads its row from (owner, slot).

The backward mirrors it: the gradient of each example's row goes into the same (owner, slot)
and one all-to-all brings the (N, C, W) gradients to the owners, which hand (local row, row
gradient) pairs to the row-sparse optimizer (`optimizers.RowSparseOptimizer`: lazy_adam,
lazy_sgd), updating owned rows and moments in place. A dense optimizer (adam, sgd, ...) gets
the dense gradient of each device's own shard, built locally from the same pairs: every
owned row and its moments move, as dense Adam has them, and nothing table-sized crosses
devices. Replicated tables (small ones under `auto`) are looked up locally and their rows'
gradients all-gathered (batch-sized); dense parameters are data-parallel (psum of grads).

Capacity: C = min(b, roundup8(ceil(2 b / N))) slots per destination, twice a uniform
share. A batch in which some device sends more than C ids to one owner takes the exact path
instead, C = b, which can never overflow (a `lax.cond` on the pmax'd overflow flag, so every
device takes the same branch). Only the lookups and the updates branch: the routing and the
model's forward and backward are computed (and compiled) once per step. Per device and step
the collectives move, per row-sharded table, N*C ids (int32) and 2 N*C*W rows (forward values
and backward gradients, in the compute dtype): with C = 2b/N, 8b + 4bW·s bytes (s: 4 for
float32, 2 for bfloat16), whatever the table's rows.
"""

import functools
from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
from jax import lax
import optax
from jax.sharding import PartitionSpec as P

from ncf_jax import optimizers
from ncf_jax import tables as tables_lib
from ncf_jax import train_step as train_step_lib
from ncf_jax.sharding import DATA
from ncf_jax.tables import TableSpec

CAPACITY_FACTOR = 2  # slots per destination: this many times a uniform share


def capacity(local_batch: int, num_devices: int, factor: int = CAPACITY_FACTOR) -> int:
  """Slots per destination bucket on the fast path (see the module doc)."""
  share = -(-factor * local_batch // num_devices)
  return min(local_batch, -(-share // 8) * 8)


def route(ids: jax.Array, shard_rows: int, num_devices: int):
  """(owner, slot, counts): each id's owning device, its position among the ids going to
  that owner (in batch order), and how many ids go to each owner."""
  owner = (ids // shard_rows).astype(jnp.int32)
  order = jnp.argsort(owner, stable=True)
  counts = jnp.zeros((num_devices,), jnp.int32).at[owner].add(1)
  starts = jnp.cumsum(counts) - counts
  rank = jnp.zeros_like(owner).at[order].set(jnp.arange(ids.shape[0], dtype=jnp.int32))
  return owner, rank - starts[owner], counts


def _buckets(values: jax.Array, owner, slot, num_devices: int, cap: int, fill) -> jax.Array:
  """(N, C, ...) buckets holding each value at (owner, slot); the rest `fill`."""
  out = jnp.full((num_devices, cap, *values.shape[1:]), fill, values.dtype)
  return out.at[owner, slot].set(values, mode='drop')


def exchange(x: jax.Array) -> jax.Array:
  """All-to-all over `data`: bucket d of every device goes to device d, which receives
  one bucket per source (leading axis: the source)."""
  return lax.all_to_all(x, DATA, 0, 0)


def gather_owned(table: jax.Array, ids: jax.Array, owner, slot, num_devices: int, cap: int,
                 dtype):
  """The rows of (b,) global `ids` of a row-sharded table whose local shard is `table`
  (inside `shard_map`), sent to `route`'s (`owner`, `slot`) through buckets of `cap` slots.
  Returns (rows (b, W) in `dtype`, the (N, C) local rows this device served: what
  `scatter_back` needs)."""
  shard_rows = table.shape[0]
  local = ids - owner * shard_rows
  wanted = exchange(_buckets(local, owner, slot, num_devices, cap, shard_rows))  # (N, C)
  found = table.at[wanted].get(mode='fill', fill_value=0).astype(dtype)  # (N, C, W)
  back = exchange(found)
  return back[owner, slot], wanted


def scatter_back(row_grads: jax.Array, owner, slot, wanted, num_devices: int, cap: int):
  """The gradients of the rows `gather_owned` fetched, at their owners: (local row ids
  (N*C,), row gradients (N*C, W) float32); empty slots carry an out-of-range row."""
  sent = exchange(_buckets(row_grads, owner, slot, num_devices, cap, 0))
  return wanted.reshape(-1), sent.reshape(-1, row_grads.shape[-1]).astype(jnp.float32)


def overflows(counts_by_table: dict, cap: int) -> jax.Array:
  """Whether any device sends more than `cap` ids of any table to one owner (`route`'s
  counts; the same answer on every device)."""
  worst = jnp.zeros((), jnp.int32)
  for counts in counts_by_table.values():
    worst = jnp.maximum(worst, counts.max())
  return lax.pmax(worst, DATA) > cap


def on_capacity(fn: Callable, overflow, exact: int, fast: int):
  """`fn(cap)` at the `fast` capacity, or at the `exact` one when `overflow` (`overflows`'
  flag, pmax'd: every device takes the same branch of the `lax.cond`); `fn(exact)` alone
  when there is no fast path (`overflow` None)."""
  if overflow is None:
    return fn(exact)
  return lax.cond(overflow, functools.partial(fn, exact), functools.partial(fn, fast))


def with_placeholders(rest: dict, specs: dict) -> dict:
  """`rest` (the non-table parameters) with a never-read stand-in of each table's global
  shape: what `model.score` needs to set up, which reads only the looked-up rows (the
  stand-in is a broadcast scalar, which XLA removes unused)."""
  stand_ins = {path: jnp.broadcast_to(jnp.zeros((), jnp.float32), spec.shape)
               for path, spec in specs.items()}
  return optimizers.join_tables(stand_ins, rest)


def make_local_step(model, optimizer: optimizers.Optimizer, regularization,
                    specs: Sequence[TableSpec], num_devices: int, local_batch: int
                    ) -> Callable:
  """`step(state, batch) -> (state, metrics)` on one device's shard of the state and the
  batch (to run inside `shard_map` over `data`)."""
  specs = tables_lib.by_path(specs)
  routed = {p: s for p, s in specs.items() if s.placement == 'rows'}
  kernels = frozenset(model.hidden_kernels())
  reg = regularization
  dtype = getattr(model, 'dtype', jnp.float32)
  fast = capacity(local_batch, num_devices)

  def step(state, batch):
    params = state['params']
    table_params, rest = optimizers.split_tables(params, specs)
    # (owner, slot, counts) of each id: the same at any capacity.
    routes = {path: route(batch[spec.ids], table_params[path].shape[0], num_devices)
              for path, spec in routed.items()}
    overflow = (overflows({path: r[2] for path, r in routes.items()}, fast)
                if routed and fast < local_batch else None)

    def lookups(cap: int):
      rows, wanted = {}, {}
      for path, spec in routed.items():
        rows[path], served = gather_owned(table_params[path], batch[spec.ids],
                                          *routes[path][:2], num_devices, cap, dtype)
        # Both branches return (N, b): the fast one's (N, C) padded with out-of-range rows.
        wanted[path] = jnp.pad(served, ((0, 0), (0, local_batch - cap)),
                               constant_values=table_params[path].shape[0])
      return rows, wanted

    # Only the lookups and the updates depend on the capacity: the model's forward and
    # backward are traced (and compiled) once, not once per branch.
    rows, wanted = on_capacity(lookups, overflow, local_batch, fast)
    for path, spec in specs.items():
      if path not in routed:
        rows[path] = jnp.take(table_params[path], batch[spec.ids], axis=0)
    weight_sum = lax.psum(batch['weights'].sum(), DATA)
    denominator = jnp.maximum(weight_sum, 1.0)
    per_example = reg.per_example or optimizer.row_sparse

    def loss_fn(rest, rows):
      nested = flax.traverse_util.unflatten_dict(rows)
      logits = model.apply({'params': with_placeholders(rest, specs)}, nested,
                           method=model.score)
      total = (optax.sigmoid_binary_cross_entropy(logits, batch['labels'])
               * batch['weights']).sum()
      loss = total / denominator
      if per_example and reg.l2_embeddings:
        loss += reg.l2_embeddings * (
            train_step_lib.per_example_l2(nested, batch['weights'])
            * jnp.maximum(batch['weights'].sum(), 1.0) / denominator)
      return loss, total

    # `rest` is the same on every device and the loss differs: shard_map's autodiff sums the
    # devices' gradients of `rest` (a psum, the transpose of the implicit broadcast).
    (rest_grads, row_grads), total = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(rest, rows)
    if reg.l2_layers:  # the same on every device: added once, after the sum
      penalty = jax.grad(lambda r: train_step_lib.l2_penalty(r, {}, kernels, 0.0,
                                                             reg.l2_layers))(rest)
      rest_grads = jax.tree_util.tree_map(jnp.add, rest_grads, penalty)
    replicated_ids, replicated_grads = {}, {}
    for path, spec in specs.items():
      if path not in routed:  # a replicated table: every device applies the whole batch's rows
        replicated_ids[path] = lax.all_gather(batch[spec.ids], DATA, tiled=True)
        replicated_grads[path] = lax.all_gather(row_grads[path], DATA,
                                                tiled=True).astype(jnp.float32)

    def update(cap: int):
      ids, grads = dict(replicated_ids), dict(replicated_grads)
      for path in routed:
        owner, slot, _ = routes[path]
        ids[path], grads[path] = scatter_back(row_grads[path], owner, slot,
                                              wanted[path][:, :cap], num_devices, cap)
      if optimizer.row_sparse:
        return optimizer.apply(params, state['opt_state'],
                               optimizers.RowGrads(rest_grads, grads, ids))
      dense = {}
      for path, table in table_params.items():
        dense[path] = jnp.zeros_like(table).at[ids[path]].add(grads[path], mode='drop')
        if reg.l2_embeddings and not reg.per_example:
          dense[path] += 2 * reg.l2_embeddings * table
      return optimizer.apply(params, state['opt_state'], optimizers.join_tables(dense, rest_grads))

    new_params, opt_state = on_capacity(update, overflow, local_batch, fast)
    state = dict(step=state['step'] + 1, params=new_params, opt_state=opt_state)
    return state, dict(loss_sum=lax.psum(total, DATA), weight_sum=weight_sum)

  return step


def fetch(table: jax.Array, ids: jax.Array, num_devices: int, dtype) -> jax.Array:
  """The rows of (b,) global `ids` from a row-sharded table's local shard, forward only
  (evaluation): the fast capacity unless some bucket would overflow, then the exact one."""
  local_batch = ids.shape[0]
  fast = capacity(local_batch, num_devices)
  owner, slot, counts = route(ids, table.shape[0], num_devices)
  gather = lambda cap: gather_owned(table, ids, owner, slot, num_devices, cap, dtype)[0]
  overflow = overflows({'ids': counts}, fast) if fast < local_batch else None
  return on_capacity(gather, overflow, local_batch, fast)


def score(model, params: dict, users: jax.Array, items: jax.Array, num_devices: int):
  """`model`'s logits (b,) for (b,) ids inside `shard_map`, row-sharded tables' rows fetched
  from their owners (replicated tables looked up in place)."""
  dtype = getattr(model, 'dtype', jnp.float32)
  specs = tables_lib.by_path(model.table_specs())
  table_params, rest = optimizers.split_tables(params, specs)
  rows = {}
  for path, spec in specs.items():
    ids = users if spec.ids == 'users' else items
    if spec.placement == 'rows':
      rows[path] = fetch(table_params[path], ids, num_devices, dtype)
    else:
      rows[path] = jnp.take(table_params[path], ids, axis=0)
  return model.apply({'params': with_placeholders(rest, specs)},
                     flax.traverse_util.unflatten_dict(rows), method=model.score)


def has_row_sharded(specs: Sequence[TableSpec]) -> bool:
  return any(spec.placement == 'rows' for spec in specs)



def make_train_chunk(model, optimizer: optimizers.Optimizer, regularization, layout,
                     state_shardings, select_batch=None, inputs_sharding=None) -> Callable:
  """`train_step.make_train_chunk` for a model with row-sharded tables: the same jitted
  `train_chunk(state, inputs, num_steps)` (a batch source's `select_batch(inputs, i)` picks
  step i's global batch, by default row i of (S, B) batches), each step run under
  `shard_map` (see the module doc); the state's shardings are `layout.state_shardings`'s."""
  step = _mapped_step(model, optimizer, regularization, layout, state_shardings)
  select_batch = select_batch or (lambda batches, i: jax.tree_util.tree_map(lambda x: x[i],
                                                                            batches))

  def train_chunk(state, inputs, num_steps):
    def body(i, carry):
      state, totals = carry
      state, metrics = step(state, select_batch(inputs, i))
      return state, jax.tree_util.tree_map(jnp.add, totals, metrics)

    zeros = dict(loss_sum=jnp.zeros(()), weight_sum=jnp.zeros(()))
    state, totals = lax.fori_loop(0, num_steps, body, (state, zeros))
    return state, dict(totals, nonfinite=train_step_lib.count_nonfinite(totals['loss_sum'],
                                                                        state['params']))

  return jax.jit(train_chunk, donate_argnums=0,
                 in_shardings=(state_shardings, inputs_sharding or layout.chunk,
                               layout.replicated),
                 out_shardings=(state_shardings, layout.replicated))


def _mapped_step(model, optimizer, regularization, layout, state_shardings) -> Callable:
  """One step over (B,) global batches, run under `shard_map` over `data`."""
  specs, num_devices = model.table_specs(), layout.num_devices
  state_specs = jax.tree_util.tree_map(lambda s: s.spec, state_shardings)

  def one_step(state, batch):
    step = make_local_step(model, optimizer, regularization, specs, num_devices,
                           batch['users'].shape[0])
    return step(state, batch)

  return jax.shard_map(one_step, mesh=layout.mesh, in_specs=(state_specs, P(DATA)),
                       out_specs=(state_specs, P()))


def make_step(model, optimizer: optimizers.Optimizer, regularization, layout,
              state_shardings) -> Callable:
  """One jitted step `(state, batch) -> (state, metrics)` for (B,) batches split over `data`
  (what the communication benchmark compiles; training runs `make_train_chunk`)."""
  batch = jax.sharding.NamedSharding(layout.mesh, P(DATA))
  return jax.jit(_mapped_step(model, optimizer, regularization, layout, state_shardings),
                 in_shardings=(state_shardings, batch),
                 out_shardings=(state_shardings, layout.replicated))
