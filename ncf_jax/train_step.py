"""The train state (a plain dict pytree) and the pure, jit-compiled train step.

`train_step(state, batch) -> (state, metrics)` takes one batch; `train_chunk`
runs it over a stack of batches in one `lax.fori_loop`, so one dispatch covers
many steps and metrics stay on the device.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax import lax
import optax

from ncf_jax import models
from ncf_jax import optimizers

TrainState = dict[str, Any]  # {'step', 'params', 'opt_state', 'table_state'}
Batch = dict[str, jax.Array]  # {'users', 'items', 'labels', 'weights'}, each (B,)


def split_tables(params: dict) -> tuple[dict, dict]:
  """(embedding tables, everything else) as two nested dicts."""
  flat = flax.traverse_util.flatten_dict(params)
  tables = {k: v for k, v in flat.items() if models.is_embedding_path(k)}
  rest = {k: v for k, v in flat.items() if not models.is_embedding_path(k)}
  return (flax.traverse_util.unflatten_dict(tables), flax.traverse_util.unflatten_dict(rest))


def merge_trees(a: dict, b: dict) -> dict:
  """Union of two nested dicts with disjoint leaves."""
  return flax.traverse_util.unflatten_dict({**flax.traverse_util.flatten_dict(a),
                                            **flax.traverse_util.flatten_dict(b)})


def init_state(params: dict, tx: optax.GradientTransformation, optimizer: str) -> TrainState:
  """A fresh state: step 0 and optimizer moments at zero.

  With a lazy optimizer `tx` covers the non-table parameters only, and
  `table_state` holds lazy Adam's per-row moments (lazy SGD has none).
  """
  if optimizer in optimizers.LAZY_OPTIMIZERS:
    tables, rest = split_tables(params)
    table_state = {} if optimizer == 'lazy_sgd' else jax.tree_util.tree_map(
        lambda t: optimizers.RowAdamState(jnp.zeros_like(t), jnp.zeros_like(t)), tables)
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(rest),
                table_state=table_state)
  return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
              table_state={})


def abstract_init_state(model: models.NCF, tx: optax.GradientTransformation,
                        optimizer: str) -> TrainState:
  """Shapes and dtypes of a fresh state (`jax.eval_shape`: nothing is allocated)."""
  ids = jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(lambda: init_state(
      model.init(jax.random.key(0), ids, ids)['params'], tx, optimizer))


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


def l2_penalty(params: dict, l2_embeddings: float, l2_layers: float) -> jax.Array:
  """The original code's Keras regularisers: λ·Σw² on embedding tables and hidden kernels."""
  total = jnp.zeros(())
  for path, value in flax.traverse_util.flatten_dict(params).items():
    if models.is_embedding_path(path) and l2_embeddings:
      total += l2_embeddings * jnp.sum(value**2)
    elif path[0] == 'mlp' and path[-1] == 'kernel' and l2_layers:
      total += l2_layers * jnp.sum(value**2)
  return total


def make_train_step(model: models.NCF, tx: optax.GradientTransformation, config,
                    total_steps: int = 1
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """A pure train step for `model`; a lazy optimizer updates the batch's table rows only.

  `total_steps` (the run's) sets the end of a decaying learning-rate schedule; `tx`
  must have been made with the same.
  """
  lazy, lazy_sgd = optimizers.is_lazy(config), config.optimizer == 'lazy_sgd'
  l2_emb, l2_layers = float(config.l2_embeddings), float(config.l2_layers)
  per_example = bool(config.get('l2_embeddings_per_example', False))
  schedule = optimizers.learning_rate_schedule(config, total_steps)
  b1, b2, eps = float(config.adam_b1), float(config.adam_b2), float(config.adam_eps)

  def dense_step(state: TrainState, batch: Batch) -> tuple[TrainState, jax.Array]:
    def loss_fn(params):
      rows = model.apply({'params': params}, batch['users'], batch['items'], method=model.embed)
      logits = model.apply({'params': params}, rows, method=model.score)
      mean, total = weighted_log_loss(logits, batch['labels'], batch['weights'])
      if per_example:
        penalty = (l2_penalty(params, 0.0, l2_layers)
                   + l2_emb * per_example_l2(rows, batch['weights']))
      else:
        penalty = l2_penalty(params, l2_emb, l2_layers)
      return mean + penalty, total

    grads, total = jax.grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    return dict(state, step=state['step'] + 1, params=params, opt_state=opt_state), total

  def lazy_step(state: TrainState, batch: Batch) -> tuple[TrainState, jax.Array]:
    tables, rest = split_tables(state['params'])
    rows = model.apply({'params': state['params']}, batch['users'], batch['items'],
                       method=model.embed)

    def loss_fn(rest, rows):
      logits = model.apply({'params': merge_trees(tables, rest)}, rows, method=model.score)
      mean, total = weighted_log_loss(logits, batch['labels'], batch['weights'])
      # A lazy optimizer never visits the whole table: the penalty is per example.
      penalty = l2_penalty(rest, 0.0, l2_layers) + l2_emb * per_example_l2(rows, batch['weights'])
      return mean + penalty, total

    (rest_grads, row_grads), total = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(rest, rows)
    updates, opt_state = tx.update(rest_grads, state['opt_state'], rest)
    rest = optax.apply_updates(rest, updates)
    lr = schedule(state['step'])  # optax's convention: the rate of the step about to run
    step = state['step'] + 1
    if lazy_sgd:
      new_tables = {tower: {name: optimizers.lazy_sgd_update(
          table, batch[models.table_ids_key((tower, name))], row_grads[tower][name], lr)
                            for name, table in named.items()} for tower, named in tables.items()}
      return dict(step=step, params=merge_trees(new_tables, rest), opt_state=opt_state,
                  table_state={}), total
    slots = {key: optimizers.unique_rows(batch[key], num_rows)
             for key, num_rows in (('users', model.num_users), ('items', model.num_items))}
    new_tables, new_table_state = {}, {}
    for tower, named in tables.items():
      new_tables[tower], new_table_state[tower] = {}, {}
      for name, table in named.items():
        uniq, inverse = slots[models.table_ids_key((tower, name))]
        new_tables[tower][name], new_table_state[tower][name] = optimizers.lazy_adam_update(
            table, state['table_state'][tower][name], uniq, inverse, row_grads[tower][name],
            step, lr, b1, b2, eps)
    return dict(step=step, params=merge_trees(new_tables, rest), opt_state=opt_state,
                table_state=new_table_state), total

  update = lazy_step if lazy else dense_step

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    state, loss_sum = update(state, batch)
    return state, dict(loss_sum=loss_sum, weight_sum=batch['weights'].sum())

  return train_step


def count_nonfinite(*trees) -> jax.Array:
  """The number of arrays in `trees` holding a NaN or an infinity (int32 scalar)."""
  return sum(jnp.any(~jnp.isfinite(x)).astype(jnp.int32)
             for x in jax.tree_util.tree_leaves(trees))


def make_train_chunk(model: models.NCF, tx: optax.GradientTransformation, config,
                     total_steps: int = 1
                     ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
  """Jitted `train_chunk(state, batches, num_steps)`: the first `num_steps` of the
  (S, B) batches, one `train_step` each, in one dispatch; returns summed metrics.

  The trip count is a traced value, so a short last chunk runs fewer steps
  with no recompilation and no padded step (an all-padding batch would still
  move Adam's parameters). The state is donated.
  """
  train_step = make_train_step(model, tx, config, total_steps)

  def train_chunk(state: TrainState, batches: Batch, num_steps: jax.Array
                  ) -> tuple[TrainState, dict]:
    def body(i, carry):
      state, totals = carry
      batch = jax.tree_util.tree_map(lambda x: x[i], batches)
      state, metrics = train_step(state, batch)
      return state, jax.tree_util.tree_map(jnp.add, totals, metrics)

    zeros = dict(loss_sum=jnp.zeros(()), weight_sum=jnp.zeros(()))
    state, totals = lax.fori_loop(0, num_steps, body, (state, zeros))
    # Checked once per chunk, on the device; the host reads it with the epoch's loss.
    return state, dict(totals, nonfinite=count_nonfinite(totals['loss_sum'], state['params']))

  return jax.jit(train_chunk, donate_argnums=0)
