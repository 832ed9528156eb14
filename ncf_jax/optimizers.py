"""Optimizers by name, and row-sparse ("lazy") Adam and SGD for embedding tables.

Dense Adam moves every row of every embedding table at every step (the zero
gradient of an absent row still decays its moments into a non-zero update).
Lazy Adam, like TensorFlow's LazyAdam, touches only the rows in the batch:
their moments and values are updated, bias correction uses the global step.
Lazy SGD is plain SGD that never materialises a dense table gradient, which
is what makes per-example SGD recipes (Rendle et al., 2020) cheap at large
embedding widths.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ncf_jax.errors import ConfigError

OPTIMIZERS = ('adam', 'lazy_adam', 'sgd', 'lazy_sgd', 'adagrad', 'rmsprop')
LAZY_OPTIMIZERS = ('lazy_adam', 'lazy_sgd')


def is_lazy(config) -> bool:
  """Whether `config.optimizer` updates only the embedding rows a batch looks up."""
  return config.optimizer in LAZY_OPTIMIZERS


SCHEDULES = ('constant', 'cosine')


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  """Step -> learning rate: `config.learning_rate` throughout, or (`cosine`) decayed
  along a half cosine to 0 at `total_steps`."""
  lr = float(config.learning_rate)
  name = config.get('learning_rate_schedule', 'constant')
  if name == 'constant':
    return optax.constant_schedule(lr)
  if name == 'cosine':
    return optax.cosine_decay_schedule(lr, max(int(total_steps), 1))
  raise ConfigError(f'config.learning_rate_schedule: unknown schedule {name!r}; choose from '
                    f'{SCHEDULES}')


def create_optimizer(config, total_steps: int = 1) -> optax.GradientTransformation:
  """The dense optimizer `config.optimizer` names (for a lazy one: the non-table part).

  `total_steps` (the whole run's) only matters to a decaying schedule; the state's
  structure does not depend on it, so restoring may pass any value.
  """
  lr = config.learning_rate
  if lr <= 0:
    raise ConfigError(f'config.learning_rate={lr}: must be positive')
  schedule = learning_rate_schedule(config, total_steps)
  # A constant rate stays a float: the optimizer state then has no step count, as before.
  lr = float(lr) if config.get('learning_rate_schedule', 'constant') == 'constant' else schedule
  if config.optimizer in ('adam', 'lazy_adam'):
    return optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
  if config.optimizer in ('sgd', 'lazy_sgd'):
    return optax.sgd(lr)
  if config.optimizer == 'adagrad':
    return optax.adagrad(lr)
  if config.optimizer == 'rmsprop':
    return optax.rmsprop(lr)
  raise ConfigError(f'config.optimizer: unknown optimizer {config.optimizer!r}; '
                    f'choose from {OPTIMIZERS}')


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


def lazy_adam_update(table: jax.Array, state: RowAdamState, uniq: jax.Array,
                     inverse: jax.Array, row_grads: jax.Array, count: jax.Array,
                     learning_rate: float, b1: float, b2: float,
                     eps: float) -> tuple[jax.Array, RowAdamState]:
  """Adam on the rows `uniq` of `table` only.

  `row_grads[j]` is the gradient for row `ids[j]`; repeated ids are summed
  (as the dense gradient of a gather would). Padding slots of `uniq` are
  out of range and dropped by the scatters. `count` is the 1-based step.
  """
  grads = jax.ops.segment_sum(row_grads, inverse, num_segments=uniq.shape[0])
  hints = dict(indices_are_sorted=True, unique_indices=True)
  mu = b1 * state.mu.at[uniq].get(mode='fill', fill_value=0, **hints) + (1 - b1) * grads
  nu = b2 * state.nu.at[uniq].get(mode='fill', fill_value=0, **hints) + (1 - b2) * grads**2
  count = count.astype(jnp.float32)
  mu_hat = mu / (1 - b1**count)
  nu_hat = nu / (1 - b2**count)
  step = -learning_rate * mu_hat / (jnp.sqrt(nu_hat) + eps)
  table = table.at[uniq].add(step.astype(table.dtype), mode='drop', **hints)
  return table, RowAdamState(state.mu.at[uniq].set(mu, mode='drop', **hints),
                             state.nu.at[uniq].set(nu, mode='drop', **hints))


def lazy_sgd_update(table: jax.Array, ids: jax.Array, row_grads: jax.Array,
                    learning_rate: float) -> jax.Array:
  """SGD on the rows `ids` of `table`; a repeated id gets the sum of its gradients."""
  return table.at[ids].add((-learning_rate * row_grads).astype(table.dtype))
