"""Every optimizer as one object: dense (optax), or row-sparse ("lazy") for embedding tables.

An `Optimizer` owns its hyperparameters, schedule and state: `init(params,
tables)` makes the state, `apply(params, state, grads)` returns the new
params and state. Its `row_sparse` property tells the train step which
gradient to hand over:

- dense (`row_sparse` False): the gradient of every parameter, as optax takes
  it. Dense Adam moves every row of every embedding table at every step (the
  zero gradient of an absent row still decays its moments into an update).
- row-sparse (`row_sparse` True): a `RowGrads`, i.e. the gradients of the
  non-table parameters plus, per table, the gradient of each looked-up row and
  the row's id. Only those rows change. Lazy Adam, like TensorFlow's LazyAdam,
  updates the moments of the batch's rows and bias-corrects with the global
  step; lazy SGD never materialises a dense table gradient, which is what
  makes per-example SGD recipes (Rendle et al., 2020) cheap at large widths.

A new optimizer: its optax transformation in `_DENSE` (and, if row-sparse, its `RowRule`
in `_ROW_RULES`); `OPTIMIZERS` lists the names; its test.
"""

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import flax
import jax
import jax.numpy as jnp
import optax

from ncf_jax import kept_programs
from ncf_jax.tables import IdsKey, ParamPath

Params = Any  # a nested dict of arrays
SCHEDULES = ('constant', 'cosine')


class RowGrads(NamedTuple):
  """What a row-sparse optimizer is given: dense gradients of the non-table
  parameters, and per table path the (B, ...) gradients of its looked-up rows
  with their (B,) ids (a repeated id gets the sum of its rows' gradients)."""
  dense: Params
  rows: dict[ParamPath, jax.Array]
  ids: dict[ParamPath, jax.Array]


class Optimizer(Protocol):
  """The interface every optimizer of this project has."""
  row_sparse: bool

  def init(self, params: Params, tables: Mapping[ParamPath, IdsKey]) -> Any:
    """The optimizer state for `params`, whose `tables` are embedding tables."""

  def apply(self, params: Params, state: Any, grads: Any) -> tuple[Params, Any]:
    """(new params, new state) after one step with `grads` (a tree, or `RowGrads`)."""


def split_tables(params: Params, tables) -> tuple[dict[ParamPath, jax.Array], Params]:
  """({table path: table}, the other parameters as a nested dict)."""
  flat = flax.traverse_util.flatten_dict(params)
  rest = {k: v for k, v in flat.items() if k not in tables}
  return {k: flat[k] for k in tables}, flax.traverse_util.unflatten_dict(rest)


def join_tables(tables: dict[ParamPath, jax.Array], rest: Params) -> Params:
  """The inverse of `split_tables`."""
  return flax.traverse_util.unflatten_dict({**flax.traverse_util.flatten_dict(rest), **tables})


def _nested(flat: dict[ParamPath, Any]) -> dict:
  """Per-table states as a nested dict like the params; rules without state leave none."""
  return flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class DenseOptimizer:
  """An optax transformation over every parameter."""
  tx: optax.GradientTransformation
  row_sparse = False

  def init(self, params: Params, tables: Mapping[ParamPath, IdsKey]) -> Any:
    del tables  # every parameter is updated alike
    return self.tx.init(params)

  def apply(self, params: Params, state: Any, grads: Params) -> tuple[Params, Any]:
    updates, state = self.tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


class RowRule(Protocol):
  """How a row-sparse optimizer updates the looked-up rows of one table."""

  def init(self, table: jax.Array) -> Any:
    """Per-table state (e.g. Adam's moments), shaped like the table."""

  def update(self, table: jax.Array, state: Any, ids: jax.Array, row_grads: jax.Array,
             count: jax.Array, learning_rate: jax.Array) -> tuple[jax.Array, Any]:
    """(table, state) after one step on rows `ids`; `count` is the 1-based step."""


@dataclasses.dataclass(frozen=True)
class RowSparseOptimizer:
  """`dense` for the non-table parameters; `rule` for the looked-up rows of each table.

  State: {'dense': dense's state, 'rows': per-table state of `rule` (a nested
  dict like the params), 'count': steps taken}.
  """
  dense: optax.GradientTransformation
  rule: RowRule
  schedule: optax.Schedule
  row_sparse = True

  def init(self, params: Params, tables: Mapping[ParamPath, IdsKey]) -> Any:
    table_params, rest = split_tables(params, tables)
    rows = {path: self.rule.init(table) for path, table in table_params.items()}
    return dict(dense=self.dense.init(rest), rows=_nested(rows), count=jnp.zeros((), jnp.int32))

  def apply(self, params: Params, state: Any, grads: RowGrads) -> tuple[Params, Any]:
    tables, rest = split_tables(params, grads.rows)
    updates, dense_state = self.dense.update(grads.dense, state['dense'], rest)
    rest = optax.apply_updates(rest, updates)
    learning_rate = self.schedule(state['count'])  # optax's convention: the coming step's rate
    count = state['count'] + 1
    row_states = flax.traverse_util.flatten_dict(state['rows'])
    new_tables, new_rows = {}, {}
    for path, table in tables.items():
      new_tables[path], new_rows[path] = self.rule.update(
          table, row_states.get(path), grads.ids[path], grads.rows[path], count, learning_rate)
    return join_tables(new_tables, rest), dict(dense=dense_state, rows=_nested(new_rows),
                                               count=count)


class RowAdamState(NamedTuple):
  """Adam moments of one embedding table."""
  mu: jax.Array
  nu: jax.Array


def unique_rows(ids: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
  """Sorted distinct ids, padded to len(ids) with distinct out-of-range ids, and each id's slot.

  Sorted and unique even in the padding, so the scatters below can tell XLA so
  (`indices_are_sorted`, `unique_indices`), which makes them much cheaper.
  """
  uniq, inverse = jnp.unique(ids, size=ids.shape[0], fill_value=num_rows, return_inverse=True)
  slots = jnp.arange(ids.shape[0], dtype=uniq.dtype)
  uniq = jnp.where(uniq >= num_rows, num_rows + slots, uniq)
  return uniq, inverse.reshape(ids.shape)


@dataclasses.dataclass(frozen=True)
class LazyAdam:
  """Adam on the looked-up rows only: repeated ids' gradients are summed (as the
  dense gradient of a gather would), then each distinct row takes one Adam step."""
  b1: float
  b2: float
  eps: float

  def init(self, table: jax.Array) -> RowAdamState:
    return RowAdamState(jnp.zeros_like(table), jnp.zeros_like(table))

  def update(self, table, state, ids, row_grads, count, learning_rate):
    uniq, inverse = unique_rows(ids, table.shape[0])
    grads = jax.ops.segment_sum(row_grads, inverse, num_segments=uniq.shape[0])
    # Padding slots of `uniq` are out of range: reads fill 0, writes are dropped.
    hints = dict(indices_are_sorted=True, unique_indices=True)
    b1, b2 = self.b1, self.b2
    mu = b1 * state.mu.at[uniq].get(mode='fill', fill_value=0, **hints) + (1 - b1) * grads
    nu = b2 * state.nu.at[uniq].get(mode='fill', fill_value=0, **hints) + (1 - b2) * grads**2
    count = count.astype(jnp.float32)
    mu_hat = mu / (1 - b1**count)
    nu_hat = nu / (1 - b2**count)
    step = -learning_rate * mu_hat / (jnp.sqrt(nu_hat) + self.eps)
    table = table.at[uniq].add(step.astype(table.dtype), mode='drop', **hints)
    return table, RowAdamState(state.mu.at[uniq].set(mu, mode='drop', **hints),
                               state.nu.at[uniq].set(nu, mode='drop', **hints))


@dataclasses.dataclass(frozen=True)
class LazySgd:
  """SGD on the looked-up rows; a repeated id gets the sum of its gradients. No state."""

  def init(self, table: jax.Array) -> None:
    del table

  def update(self, table, state, ids, row_grads, count, learning_rate):
    del state, count
    return table.at[ids].add((-learning_rate * row_grads).astype(table.dtype)), None


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """What `create_optimizer` builds (run_settings reads it from a config)."""
  name: str  # one of OPTIMIZERS
  learning_rate: float
  schedule: str = 'constant'  # one of SCHEDULES
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8


def learning_rate_schedule(settings: OptimizerSettings, total_steps: int) -> optax.Schedule:
  """Step -> learning rate: `settings.learning_rate` throughout, or (`cosine`) decayed
  along a half cosine to 0 at `total_steps`."""
  if settings.schedule == 'cosine':
    return optax.cosine_decay_schedule(settings.learning_rate, max(int(total_steps), 1))
  return optax.constant_schedule(settings.learning_rate)


def _adam(settings: OptimizerSettings, rate):
  return optax.adam(rate, b1=settings.adam_b1, b2=settings.adam_b2, eps=settings.adam_eps)


# name -> the optax transformation of the parameters it updates densely (all of them, or the
# non-table ones of a row-sparse optimizer); name -> the row rule of a row-sparse optimizer.
_DENSE: dict[str, Callable[[OptimizerSettings, Any], optax.GradientTransformation]] = {
    'adam': _adam,
    'lazy_adam': _adam,
    'sgd': lambda settings, rate: optax.sgd(rate),
    'lazy_sgd': lambda settings, rate: optax.sgd(rate),
    'adagrad': lambda settings, rate: optax.adagrad(rate),
    'rmsprop': lambda settings, rate: optax.rmsprop(rate),
}
_ROW_RULES: dict[str, Callable[[OptimizerSettings], RowRule]] = {
    'lazy_adam': lambda settings: LazyAdam(settings.adam_b1, settings.adam_b2, settings.adam_eps),
    'lazy_sgd': lambda settings: LazySgd(),
}
OPTIMIZERS = tuple(_DENSE)


def create_optimizer(settings: OptimizerSettings, total_steps: int = 1) -> Optimizer:
  """The optimizer `settings.name` names: one object for equal settings (programs are keyed
  by it), so runs of any length under a constant rate share their compiled programs.

  `total_steps` (the whole run's) only matters to a decaying schedule; the state's
  structure does not depend on it, so restoring may pass any value.
  """
  return _optimizer(settings, total_steps if settings.schedule != 'constant' else 1)


@kept_programs.kept(maxsize=16)
def _optimizer(settings: OptimizerSettings, total_steps: int) -> Optimizer:
  schedule = learning_rate_schedule(settings, total_steps)
  # A constant rate stays a float: the optax state then has no step count.
  constant = settings.schedule == 'constant'
  dense = _DENSE[settings.name](settings, settings.learning_rate if constant else schedule)
  if settings.name in _ROW_RULES:
    return RowSparseOptimizer(dense, _ROW_RULES[settings.name](settings), schedule)
  return DenseOptimizer(dense)


def is_row_sparse(name: str) -> bool:
  """Whether the optimizer `name` updates only the embedding rows a batch looks up."""
  return name in _ROW_RULES
