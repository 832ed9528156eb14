"""Scores and top-k recommendations from a trained workdir.

  rec = Recommender.from_workdir('/tmp/neumf')
  rec.score(users, items)   # (N,) predicted probabilities, sigmoid of the logits
  rec.recommend(42, k=10)   # [(item, probability), ...] best first, training items excluded

Command line: `python -m ncf_jax.recommend --workdir=DIR --user=42 --k=10`
prints one `item<TAB>probability` line per recommendation.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from ncf_jax import models
from ncf_jax import pretrain
from ncf_jax import xla_cpu
from ncf_jax.data import registry
from ncf_jax.errors import NcfError


class InputError(NcfError, ValueError):
  """An unknown user or item id, or an argument the model cannot take (one line)."""


def _ids(values, limit: int, what: str) -> np.ndarray:
  """`values` as a 1-D int32 array, every id in [0, limit)."""
  array = np.asarray(values)
  if array.ndim == 0:
    array = array.reshape(1)
  if array.ndim != 1:
    raise InputError(f'{what} ids: expected a 1-D array, got shape {array.shape}')
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise InputError(f'{what} ids: expected integers, got dtype {array.dtype}')
  bad = (array < 0) | (array >= limit)
  if bad.any():
    raise InputError(f'unknown {what} id {array[bad][0]} (valid: 0..{limit - 1})')
  return array.astype(np.int32)


class Recommender:
  """A trained model's best parameters with the training matrix of its dataset."""

  def __init__(self, model: models.NCF, params: dict, train_matrix: scipy.sparse.csr_matrix,
               batch_size: int = 4096):
    self.model = model
    self.params = params
    self.train_matrix = train_matrix.tocsr()
    self.batch_size = int(batch_size)
    self.num_users, self.num_items = model.num_users, model.num_items
    # One shape each, so calls of any size reuse one compilation.
    self._score_batch = jax.jit(lambda p, u, i: jax.nn.sigmoid(model.apply({'params': p}, u, i)))
    self._all_items = jnp.arange(self.num_items, dtype=jnp.int32)
    self._user_logits = jax.jit(lambda p, u, i: model.apply(
        {'params': p}, u, i, method=model.score_matrix)[0])

  @classmethod
  def from_workdir(cls, workdir: str, batch_size: int = 4096) -> 'Recommender':
    """Loads `<workdir>/config.json`, its dataset (for the training matrix) and best params."""
    config = pretrain.read_config(workdir)
    dataset = registry.load_dataset(config)
    state, _, model = pretrain.restore_best_state(workdir, config, dataset.num_users,
                                                  dataset.num_items)
    return cls(model, state['params'], dataset.train_matrix, batch_size)

  def score(self, users, items) -> np.ndarray:
    """(N,) float32 predicted probabilities for N (user, item) pairs."""
    users = _ids(users, self.num_users, 'user')
    items = _ids(items, self.num_items, 'item')
    if users.shape != items.shape:
      raise InputError(f'users and items: lengths differ ({len(users)} vs {len(items)})')
    n, b = len(users), self.batch_size
    pad = -n % b
    users = np.concatenate([users, np.zeros(pad, np.int32)])  # id 0 exists; its scores are dropped
    items = np.concatenate([items, np.zeros(pad, np.int32)])
    out = [self._score_batch(self.params, users[s:s + b], items[s:s + b])
           for s in range(0, len(users), b)]
    return np.asarray(jnp.concatenate(out))[:n] if out else np.zeros(0, np.float32)

  def recommend(self, user: int, k: int = 10) -> list[tuple[int, float]]:
    """The k best items `user` has no training interaction with, as (item, probability),
    best first (ties by item id). Fewer than k if fewer items are left."""
    if isinstance(user, bool) or not isinstance(user, (int, np.integer)):
      raise InputError(f'user id: expected an integer, got {user!r}')
    user = int(_ids([user], self.num_users, 'user')[0])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
      raise InputError(f'k={k!r}: must be a positive integer')
    logits = np.asarray(self._user_logits(self.params, jnp.asarray([user], jnp.int32),
                                          self._all_items))
    seen = self.train_matrix.indices[self.train_matrix.indptr[user]:
                                     self.train_matrix.indptr[user + 1]]
    candidates = np.setdiff1d(np.arange(self.num_items), seen)
    order = np.lexsort((candidates, -logits[candidates]))[:int(k)]
    top = candidates[order]
    probabilities = np.asarray(jax.nn.sigmoid(logits[top]))
    return [(int(i), float(p)) for i, p in zip(top, probabilities)]


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags; defined only when run, so importing this module defines none."""
  flags.DEFINE_string('workdir', None, 'A training workdir (config.json and checkpoints/best).')
  flags.DEFINE_integer('user', None, 'User id to recommend for.')
  flags.DEFINE_integer('k', 10, 'Number of items to recommend.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  for name in ('workdir', 'user'):
    if FLAGS[name].value is None:
      print(f'error: --{name} is required', file=sys.stderr)
      sys.exit(1)
  try:
    recommender = Recommender.from_workdir(FLAGS.workdir)
    recommendations = recommender.recommend(FLAGS.user, FLAGS.k)
  except NcfError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  for item, probability in recommendations:
    print(f'{item}\t{probability:.6f}')


if __name__ == '__main__':
  xla_cpu.use_fast_cpu_runtime()
  define_flags()
  app.run(main)
