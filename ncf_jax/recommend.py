"""Scores and top-k recommendations from a trained workdir.

  rec = Recommender.from_workdir('/tmp/neumf')
  rec.score(users, items)   # (N,) predicted probabilities, sigmoid of the logits
  rec.recommend(42, k=10)   # [(item, probability), ...] best first, training items excluded

Command line: `python -m ncf_jax.recommend --workdir=DIR --user=42 --k=10` (or, instead of
--workdir, the `--config=... [--config.x=y]` that trained the run into its default folder)
prints one `item<TAB>probability` line per recommendation.
"""

from absl import flags
from ml_collections import config_flags
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from ncf_jax import cli
from ncf_jax import models
from ncf_jax import run_dir
from ncf_jax.data import registry
from ncf_jax.errors import ConfigError, NcfError


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

  def __init__(self, model: models.ScoringModel, params: dict, train_matrix: scipy.sparse.csr_matrix,
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
    dataset = registry.load_dataset(run_dir.RunDir(workdir).read_config())
    trained = run_dir.load_best(workdir, dataset.num_users, dataset.num_items)
    return cls(trained.model, trained.params, dataset.train_matrix, batch_size)

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
  config_flags.DEFINE_config_file(cli.CONFIG_FLAG, None, 'Instead of --workdir: the config (and '
                                  '--config.x=y overrides) of a run in its default workdir.',
                                  lock_config=True)
  flags.DEFINE_integer('user', None, 'User id to recommend for.')
  flags.DEFINE_integer('k', 10, 'Number of items to recommend.')


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.user is None:
    raise ConfigError('--user is required')
  workdir = FLAGS.workdir
  if workdir is None and FLAGS.config is not None:
    workdir = run_dir.default_workdir(FLAGS[cli.CONFIG_FLAG].config_filename, FLAGS.config)
  if workdir is None:
    raise ConfigError('--workdir (or the --config of a run in its default workdir) is required')
  for item, probability in Recommender.from_workdir(workdir).recommend(FLAGS.user, FLAGS.k):
    print(f'{item}\t{probability:.6f}')


if __name__ == '__main__':
  cli.run(main, define_flags)
