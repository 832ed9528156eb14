"""The train state (a plain dict pytree), the loss, and the pure, jit-compiled train step.

`train_step(state, batch) -> (state, metrics)` takes one batch; `train_chunk`
runs it over a stack of batches in one `lax.fori_loop`, so one dispatch covers
many steps and metrics stay on the device. The step reads no config: the model, the
optimizer and the `Regularization` (read once from the config by `run_settings`) are
handed in.
"""

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax import lax
import optax

from ncf_jax import kept_programs
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import tables as tables_lib

TrainState = dict[str, Any]  # {'step', 'params', 'opt_state'}
Batch = dict[str, jax.Array]  # {'users', 'items', 'labels', 'weights'}, each (B,)


@dataclasses.dataclass(frozen=True)
class Regularization:
  """L2 penalties: the original code's `regs` (λ·Σw² over whole tables and hidden kernels,
  every step), or with `per_example` the embedding penalty on each example's looked-up
  rows, averaged over the batch like the loss (per-example SGD with weight decay)."""
  l2_embeddings: float = 0.0
  l2_layers: float = 0.0
  per_example: bool = False


def init_state(params: dict, optimizer: optimizers.Optimizer,
               model: models.ScoringModel) -> TrainState:
  """A fresh state: step 0 and the optimizer's initial state."""
  return dict(step=jnp.zeros((), jnp.int32), params=params,
              opt_state=optimizer.init(params, tables_lib.by_path(model.table_specs())))


def abstract_state(model: models.ScoringModel, optimizer: optimizers.Optimizer) -> TrainState:
  """Shapes and dtypes of a fresh state (`jax.eval_shape`: nothing is allocated; traced once
  for an equal model and optimizer, the containers new on every call)."""
  return jax.tree_util.tree_map(lambda leaf: leaf,
                                kept_programs.build(_abstract_state, model, optimizer))


@kept_programs.kept(maxsize=16)
def _abstract_state(model: models.ScoringModel, optimizer: optimizers.Optimizer) -> TrainState:
  return jax.eval_shape(lambda params: init_state(params, optimizer, model),
                        models.abstract_params(model))


@kept_programs.kept(maxsize=16)
def fresh_state(model: models.ScoringModel, optimizer: optimizers.Optimizer):
  """The function from a seed's random key data to a fresh state (one Python function for
  an equal model and optimizer)."""
  draw = models.fresh_params(model)
  return lambda key_data: init_state(draw(key_data), optimizer, model)


def weighted_log_loss(logits: jax.Array, labels: jax.Array,
                      weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, sum) of the weighted sigmoid cross-entropy; logits and labels are (B,)."""
  losses = optax.sigmoid_binary_cross_entropy(logits, labels) * weights
  total = losses.sum()
  return total / jnp.maximum(weights.sum(), 1.0), total


def per_example_l2(rows: dict, weights: jax.Array) -> jax.Array:
  """Weighted batch mean of each example's Σw² over the embedding rows it looks up.

  Averaged like the log loss, so the penalty on a row grows with how often
  batches use it, as in per-example SGD with weight decay (Rendle et al., 2020).
  """
  per_example = sum(jnp.sum(r.reshape(r.shape[0], -1)**2, axis=1)
                    for r in jax.tree_util.tree_leaves(rows))
  return jnp.sum(weights * per_example) / jnp.maximum(weights.sum(), 1.0)


def l2_penalty(params: dict, tables, hidden_kernels, l2_embeddings: float,
               l2_layers: float) -> jax.Array:
  """The original code's Keras regularisers: λ·Σw² on embedding tables and hidden kernels."""
  total = jnp.zeros(())
  for path, value in flax.traverse_util.flatten_dict(params).items():
    if path in tables and l2_embeddings:
      total += l2_embeddings * jnp.sum(value**2)
    elif path in hidden_kernels and l2_layers:
      total += l2_layers * jnp.sum(value**2)
  return total


def make_train_step(model: models.ScoringModel, optimizer: optimizers.Optimizer,
                    regularization: Regularization = Regularization()
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """A pure train step; a row-sparse optimizer is handed the gradients of the batch's
  table rows only (`optimizers.RowGrads`), a dense one the gradient of every parameter."""
  tables, kernels = tables_lib.by_path(model.table_specs()), frozenset(model.hidden_kernels())
  reg = regularization

  def embed(params, batch):
    return model.apply({'params': params}, batch['users'], batch['items'], method=model.embed)

  def data_loss(params, rows, batch):
    logits = model.apply({'params': params}, rows, method=model.score)
    return weighted_log_loss(logits, batch['labels'], batch['weights'])

  def dense_grads(params: dict, batch: Batch) -> tuple[dict, jax.Array]:
    def loss_fn(params):
      rows = embed(params, batch)
      mean, total = data_loss(params, rows, batch)
      if reg.per_example:
        penalty = (l2_penalty(params, tables, kernels, 0.0, reg.l2_layers)
                   + reg.l2_embeddings * per_example_l2(rows, batch['weights']))
      else:
        penalty = l2_penalty(params, tables, kernels, reg.l2_embeddings, reg.l2_layers)
      return mean + penalty, total

    return jax.grad(loss_fn, has_aux=True)(params)

  def row_grads(params: dict, batch: Batch) -> tuple[optimizers.RowGrads, jax.Array]:
    table_params, rest = optimizers.split_tables(params, tables)
    rows = embed(params, batch)

    def loss_fn(rest, rows):
      mean, total = data_loss(optimizers.join_tables(table_params, rest), rows, batch)
      # The tables are never visited whole: their penalty is per example.
      penalty = (l2_penalty(rest, tables, kernels, 0.0, reg.l2_layers)
                 + reg.l2_embeddings * per_example_l2(rows, batch['weights']))
      return mean + penalty, total

    (rest_grads, rows_grads), total = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(rest, rows)
    ids = {path: batch[spec.ids] for path, spec in tables.items()}
    return optimizers.RowGrads(rest_grads, flax.traverse_util.flatten_dict(rows_grads),
                               ids), total

  gradients = row_grads if optimizer.row_sparse else dense_grads

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    grads, loss_sum = gradients(state['params'], batch)
    params, opt_state = optimizer.apply(state['params'], state['opt_state'], grads)
    state = dict(step=state['step'] + 1, params=params, opt_state=opt_state)
    return state, dict(loss_sum=loss_sum, weight_sum=batch['weights'].sum())

  return train_step


def count_nonfinite(*trees) -> jax.Array:
  """The number of arrays in `trees` holding a NaN or an infinity (int32 scalar)."""
  return sum(jnp.any(~jnp.isfinite(x)).astype(jnp.int32)
             for x in jax.tree_util.tree_leaves(trees))


def make_train_chunk(model: models.ScoringModel, optimizer: optimizers.Optimizer,
                     regularization: Regularization = Regularization(), layout=None,
                     state_shardings=None, select_batch=None, inputs_sharding=None
                     ) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]:
  """Jitted `train_chunk(state, batches, num_steps)`: the first `num_steps` of the
  (S, B) batches, one `train_step` each, in one dispatch; returns summed metrics
  and `nonfinite`, the number of non-finite arrays among the loss and the params.

  The trip count is a traced value, so a short last chunk runs fewer steps
  with no recompilation and no padded step (an all-padding batch would still
  move Adam's parameters). The state is donated. With a `sharding.Layout` and the
  state's shardings, the step is compiled for them (batches split over the `data` axis);
  the function is the same. A batch source (`batch_source.py`) hands in its own
  `select_batch(inputs, i)` (step i's batch of a chunk's inputs) and their sharding;
  by default the inputs are the (S, B) batches themselves.
  """
  train_step = make_train_step(model, optimizer, regularization)
  select_batch = select_batch or (lambda batches, i: jax.tree_util.tree_map(lambda x: x[i],
                                                                            batches))

  def train_chunk(state: TrainState, batches: Batch, num_steps: jax.Array
                  ) -> tuple[TrainState, dict]:
    def body(i, carry):
      state, totals = carry
      batch = select_batch(batches, i)
      state, metrics = train_step(state, batch)
      return state, jax.tree_util.tree_map(jnp.add, totals, metrics)

    zeros = dict(loss_sum=jnp.zeros(()), weight_sum=jnp.zeros(()))
    state, totals = lax.fori_loop(0, num_steps, body, (state, zeros))
    # Checked once per chunk, on the device; the host reads it with the epoch's loss.
    return state, dict(totals, nonfinite=count_nonfinite(totals['loss_sum'], state['params']))

  if layout is None:
    return jax.jit(train_chunk, donate_argnums=0)
  return jax.jit(train_chunk, donate_argnums=0,
                 in_shardings=(state_shardings, inputs_sharding or layout.chunk,
                               layout.replicated),
                 out_shardings=(state_shardings, layout.replicated))
