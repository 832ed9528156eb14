"""Scores and top-k recommendations from a trained workdir.

  rec = Recommender.from_workdir('/tmp/neumf')
  rec.score(users, items)   # (N,) predicted probabilities, sigmoid of the logits
  rec.recommend(42, k=10)   # [(item, probability), ...] best first, training items excluded

When the run's data was prepared by `python -m ncf_jax.data prepare` (it has id maps,
`users.tsv` and `items.tsv`), users and items are the ORIGINAL ids of the input file, e.g.
`rec.recommend('u_0042')` -> [('B00X4WHP5E', 0.93), ...]; otherwise they are the 0-based
indices of the NCF files.

Command line: `python -m ncf_jax.recommend --workdir=DIR --user=42 --k=10` (or, instead of
--workdir, the `--config=... [--config.x=y]` that trained the run into its default folder)
prints one `item<TAB>probability` line per recommendation; with `--items_meta=movies.csv
--meta_id_col=movieId --meta_title_col=title` a third column holds the item's title.
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
from ncf_jax.data import id_maps as id_maps_lib
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
  """A trained model's best parameters with the training matrix of its dataset (and the
  dataset's original ids, when it has them)."""

  def __init__(self, model: models.ScoringModel, params: dict,
               train_matrix: scipy.sparse.csr_matrix, batch_size: int = 4096,
               id_maps: id_maps_lib.IdMaps | None = None):
    self.model = model
    self.params = params
    self.train_matrix = train_matrix.tocsr()
    self.batch_size = int(batch_size)
    self.id_maps = id_maps
    self.num_users, self.num_items = model.num_users, model.num_items
    # One shape each, so calls of any size reuse one compilation.
    self._score_batch = jax.jit(lambda p, u, i: jax.nn.sigmoid(model.apply({'params': p}, u, i)))
    self._all_items = jnp.arange(self.num_items, dtype=jnp.int32)
    self._user_logits = jax.jit(lambda p, u, i: model.apply(
        {'params': p}, u, i, method=model.score_matrix)[0])

  @classmethod
  def from_workdir(cls, workdir: str, batch_size: int = 4096) -> 'Recommender':
    """Loads `<workdir>/config.json`, its dataset (for the training matrix and id maps) and
    the best params."""
    dataset = registry.load_dataset(run_dir.RunDir(workdir).read_config())
    trained = run_dir.load_best(workdir, dataset.num_users, dataset.num_items)
    return cls(trained.model, trained.params, dataset.train_matrix, batch_size,
               id_maps_lib.id_maps_for(dataset))

  def _indices(self, values, kind: str) -> np.ndarray:
    """Original ids (with id maps) or indices (without) as checked int32 indices."""
    if self.id_maps is None:
      return _ids(values, self.num_users if kind == 'user' else self.num_items, kind)
    index = self.id_maps.user_index if kind == 'user' else self.id_maps.item_index
    values = [values] if isinstance(values, (str, int, np.integer)) else list(values)
    return np.array([index(str(v)) for v in values], np.int32)

  def score(self, users, items) -> np.ndarray:
    """(N,) float32 predicted probabilities for N (user, item) pairs."""
    users, items = self._indices(users, 'user'), self._indices(items, 'item')
    if users.shape != items.shape:
      raise InputError(f'users and items: lengths differ ({len(users)} vs {len(items)})')
    n, b = len(users), self.batch_size
    pad = -n % b
    users = np.concatenate([users, np.zeros(pad, np.int32)])  # id 0 exists; its scores are dropped
    items = np.concatenate([items, np.zeros(pad, np.int32)])
    out = [self._score_batch(self.params, users[s:s + b], items[s:s + b])
           for s in range(0, len(users), b)]
    return np.asarray(jnp.concatenate(out))[:n] if out else np.zeros(0, np.float32)

  def recommend(self, user, k: int = 10) -> list[tuple[object, float]]:
    """The k best items `user` has no training interaction with, as (item, probability),
    best first (ties by item index). Fewer than k if fewer items are left."""
    if self.id_maps is None and (isinstance(user, bool)
                                 or not isinstance(user, (int, np.integer))):
      raise InputError(f'user id: expected an integer, got {user!r}')
    user = int(self._indices(user, 'user')[0])
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
    names = top.tolist() if self.id_maps is None else [self.id_maps.items[i] for i in top]
    return [(name, float(p)) for name, p in zip(names, probabilities)]


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags; defined only when run, so importing this module defines none."""
  flags.DEFINE_string('workdir', None, 'A training workdir (config.json, metrics.jsonl and its '
                      'best checkpoint).')
  config_flags.DEFINE_config_file(cli.CONFIG_FLAG, None, 'Instead of --workdir: the config (and '
                                  '--config.x=y overrides) of a run in its default workdir.',
                                  lock_config=True)
  flags.DEFINE_string('user', None, 'The user: its original id when the data was prepared '
                      'with id maps, else its 0-based index.')
  flags.DEFINE_integer('k', 10, 'Number of items to recommend.')
  flags.DEFINE_string('items_meta', None, 'A CSV of item metadata (e.g. MovieLens movies.csv) '
                      'to print titles from.')
  flags.DEFINE_string('meta_id_col', 'movieId', 'The item id column of --items_meta.')
  flags.DEFINE_string('meta_title_col', 'title', 'The title column of --items_meta.')


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.user is None:
    raise ConfigError('--user is required')
  workdir = FLAGS.workdir
  if workdir is None and FLAGS.config is not None:
    workdir = run_dir.default_workdir(FLAGS[cli.CONFIG_FLAG].config_filename, FLAGS.config)
  if workdir is None:
    raise ConfigError('--workdir (or the --config of a run in its default workdir) is required')
  recommender = Recommender.from_workdir(workdir)
  user = FLAGS.user
  if recommender.id_maps is None:
    try:
      user = int(user)
    except ValueError:
      raise InputError(f'--user={user}: this run\'s data has no id maps, so users are '
                       '0-based indices') from None
  titles = None
  if FLAGS.items_meta:
    titles = id_maps_lib.read_item_metadata(FLAGS.items_meta, FLAGS.meta_id_col,
                                            FLAGS.meta_title_col)
  for item, probability in recommender.recommend(user, FLAGS.k):
    line = f'{item}\t{probability:.6f}'
    if titles is not None:
      line += f'\t{titles.get(str(item), "")}'
    print(line)


if __name__ == '__main__':
  cli.run(main, define_flags)
