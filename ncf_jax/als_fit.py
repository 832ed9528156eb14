"""The training path of models fit by solving least squares (iALS, EASE) instead of SGD.

`train.train_epochs` hands such a run here; everything else of a run (the run folder,
lock, resume from `latest`, the epoch-0 evaluation, metrics.jsonl, the best checkpoint,
the evaluators) is the same as for SGD models. An iALS epoch is one sweep (users, then
items); an EASE epoch is the closed-form solve (the same B every epoch: `num_epochs=1`).
The state keeps the SGD state's layout (step, params, the run's optimizer state, unused)
so `trained_run.load_best`, `recommend` and the ensemble read these runs unchanged.
"""

import time

import jax
import jax.numpy as jnp
from ncf_jax import ease
from ncf_jax import ials
from ncf_jax.errors import NonFiniteError

FITTED_MODELS = ('ials', 'ease')


class IALSFitter:
  """One sweep per epoch on the dataset's training pairs."""

  def __init__(self, settings: ials.Settings, dataset):
    self.settings = settings
    users, items = dataset.train_users, dataset.train_items
    self.num_users, self.num_items = dataset.num_users, dataset.num_items
    self.by_user = ials.Pairs.build(users, items, self.num_users, self.settings.block,
                                    self.num_items)
    self.by_item = ials.Pairs.build(items, users, self.num_items, self.settings.block,
                                    self.num_users)
    self.num_pairs = len(users)

  def __call__(self, params: dict) -> tuple[dict, float]:
    tables = params
    # Padding rows (row-sharded tables) stay zero: the solve sees the real rows only.
    user_emb, item_emb, value = ials.sweep(
        self.by_user, self.by_item, tables['user_embedding'][:self.num_users],
        tables['item_embedding'][:self.num_items], self.settings)
    pad = lambda new, old: jnp.zeros_like(old).at[:new.shape[0]].set(new)
    return ({'user_embedding': pad(user_emb, tables['user_embedding']),
             'item_embedding': pad(item_emb, tables['item_embedding'])},
            float(value) / self.num_pairs)  # per observed pair


class EASEFitter:
  """X's rows as the user table and B's columns as the item table."""

  def __init__(self, regularization: float, dataset):
    self.regularization = regularization
    self.x = ease.interaction_matrix(dataset.train_users, dataset.train_items,
                                     dataset.num_users, dataset.num_items)

  def __call__(self, params: dict) -> tuple[dict, None]:
    tables = params
    b = ease.item_weights(jnp.asarray(self.x), self.regularization)
    fill = lambda new, old: jnp.zeros_like(old).at[:new.shape[0]].set(new)
    return ({'user_embedding': fill(jnp.asarray(self.x), tables['user_embedding']),
             'item_embedding': fill(b.T, tables['item_embedding'])}, None)


FITTERS = {'ials': IALSFitter, 'ease': EASEFitter}


def train_epochs(experiment, recorder, state, done_epoch: int, evaluate, record_epoch):
  """Fits, evaluates and records epochs after `done_epoch` up to `num_epochs` (the
  `evaluate` and `record_epoch` of `train`). Returns the state."""
  settings = experiment.run
  fit = FITTERS[settings.model.name](settings.fit, experiment.dataset)
  for epoch in range(done_epoch + 1, settings.training.num_epochs + 1):
    t0 = time.time()
    params, loss = fit(state['params'])
    params = jax.block_until_ready(params)
    seconds = time.time() - t0
    if not all(bool(jnp.all(jnp.isfinite(t))) for t in jax.tree_util.tree_leaves(params)):
      raise NonFiniteError(f'epoch {epoch}: the {settings.model.name} solve produced NaN or '
                           'infinite values; nothing of this epoch was saved')
    params = jax.tree_util.tree_map(lambda new, old: jax.device_put(new, old.sharding),
                                    params, state['params'])
    state = dict(state, params=params, step=state['step'] + 1)
    record = dict(evaluate(experiment, state, epoch, loss), train_seconds=seconds,
                  samples_per_second=experiment.dataset.num_train / seconds,
                  devices=experiment.layout.num_devices, processes=jax.process_count())
    record_epoch(recorder, record, state)
  return state
