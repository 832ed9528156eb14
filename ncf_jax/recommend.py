"""Scores and top-k recommendations from a trained workdir.

  rec = Recommender.from_workdir('/tmp/neumf')
  rec.score(users, items)   # (N,) predicted probabilities, sigmoid of the logits
  rec.recommend(42, k=10)   # [(item, probability), ...] best first, training items excluded
  rec.recommend_many([1, 2, 3], k=10)   # one such list per user, batched on the device

When the run's data was prepared by `python -m ncf_jax.data prepare` (it has id maps,
`users.tsv` and `items.tsv`), users and items are the ORIGINAL ids of the input file, e.g.
`rec.recommend('u_0042')` -> [('B00X4WHP5E', 0.93), ...]; otherwise they are the 0-based
indices of the NCF files.

Command line: `python -m ncf_jax.recommend --workdir=DIR --user=42 --k=10` (or, instead of
--workdir, the `--config=... [--config.x=y]` that trained the run into its default folder)
prints one `item<TAB>probability` line per recommendation; with `--items_meta=movies.csv
--meta_id_col=movieId --meta_title_col=title` a third column holds the item's title.
`--users_file=F --out=O.csv [--skip_unknown]` recommends for every user of F (one id per
line) and writes `user,rank,item,score` rows with a header line.
"""

import csv
import functools
import io
import sys

from absl import flags
from ml_collections import config_flags
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from ncf_jax import cli
from ncf_jax import models
from ncf_jax import provenance
from ncf_jax import trained_run
from ncf_jax import workdir_flags
from ncf_jax.data import files
from ncf_jax.data import id_maps as id_maps_lib
from ncf_jax.errors import ConfigError, DataError, NcfError


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
    dataset = provenance.load_run_dataset(workdir)  # the run's own data, checked
    trained = trained_run.load_best(workdir, dataset.num_users, dataset.num_items)
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


  def recommend_many(self, users, k: int = 10) -> list[list[tuple[object, float]]]:
    """`recommend` for many users at once, batched on the device: blocks of a fixed number
    of users (the last one padded), so any number of users compiles once per k."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
      raise InputError(f'k={k!r}: must be a positive integer')
    users = self._indices(users, 'user')
    k = int(min(k, self.num_items))
    block = self._users_per_block()
    out = []
    for start in range(0, len(users), block):
      ids = users[start:start + block]
      padded = np.concatenate([ids, np.zeros(block - len(ids), np.int32)])
      seen = self.train_matrix[padded].toarray()  # (block, items) bool, this block only
      found = jax.device_get(self._top_k(self.params, jnp.asarray(padded), jnp.asarray(seen),
                                         k))
      for probabilities, items, valid in zip(*(a[:len(ids)] for a in found)):
        items = items[valid]  # fewer than k unseen items: the rest were masked ones
        names = items.tolist() if self.id_maps is None else [self.id_maps.items[i] for i in items]
        out.append([(name, float(p)) for name, p in zip(names, probabilities[valid])])
    return out

  def _users_per_block(self) -> int:
    """Users per device block: up to 256, fewer for wide item sets (~16M scores a block)."""
    return int(max(1, min(256, (1 << 24) // max(1, self.num_items))))

  @functools.cached_property
  def _top_k(self):
    model, all_items = self.model, self._all_items

    @functools.partial(jax.jit, static_argnums=3)
    def top_k(params, users, seen, k):
      logits = model.apply({'params': params}, users, all_items, method=model.score_matrix)
      logits = jnp.where(seen, -jnp.inf, logits.astype(jnp.float32))
      # Ties: lax.top_k keeps the lower item index first, as `recommend` does.
      values, items = jax.lax.top_k(logits, k)
      return jax.nn.sigmoid(values), items, values > -jnp.inf
    return top_k


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
  flags.DEFINE_string('users_file', None, 'Instead of --user: a file of user ids, one per line; '
                      'writes user,rank,item,score rows (CSV, header line) to --out or stdout.')
  flags.DEFINE_string('out', None, 'With --users_file: the CSV file to write (atomically).')
  flags.DEFINE_bool('skip_unknown', False, 'With --users_file: skip ids the run does not know '
                    '(and say how many) instead of stopping at the first.')
  flags.DEFINE_integer('k', 10, 'Number of items to recommend.')
  flags.DEFINE_string('items_meta', None, 'A CSV of item metadata (e.g. MovieLens movies.csv) '
                      'to print titles from.')
  flags.DEFINE_string('meta_id_col', 'movieId', 'The item id column of --items_meta.')
  flags.DEFINE_string('meta_title_col', 'title', 'The title column of --items_meta.')


def read_users_file(path: str, recommender: Recommender, skip_unknown: bool = False
                    ) -> tuple[list, list[int]]:
  """(the users of `path` as `recommend_many` takes them, line numbers of skipped unknown ids).

  One id per line (blank lines ignored); an unknown id is an InputError naming its line
  unless `skip_unknown`."""
  users, skipped = [], []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      text = line.strip()
      if not text:
        continue
      user = _known_user(recommender, text)
      if user is None:
        if not skip_unknown:
          raise InputError(f'{path}:{number}: unknown user id {text!r} '
                           '(--skip_unknown to skip such lines)')
        skipped.append(number)
        continue
      users.append(user)
  return users, skipped


def _known_user(recommender: Recommender, text: str):
  """`text` as a user `recommend_many` takes, or None when the run has no such user."""
  if recommender.id_maps is not None:
    try:
      recommender.id_maps.user_index(text)
    except DataError:
      return None
    return text
  try:
    index = int(text)
  except ValueError:
    return None
  return index if 0 <= index < recommender.num_users else None


def recommendations_csv(users, recommendations) -> str:
  """`user,rank,item,score` rows (rank 1 = best) with a header line."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['user', 'rank', 'item', 'score'])
  for user, top in zip(users, recommendations):
    for rank, (item, probability) in enumerate(top, start=1):
      writer.writerow([user, rank, item, f'{probability:.7g}'])
  return out.getvalue()


def _recommend_file(recommender: Recommender) -> None:
  users, skipped = read_users_file(FLAGS.users_file, recommender, FLAGS.skip_unknown)
  text = recommendations_csv(users, recommender.recommend_many(users, FLAGS.k))
  if FLAGS.out:
    files.atomic_write_text(FLAGS.out, text)
  else:
    sys.stdout.write(text)
  if skipped:
    print(f'skipped {len(skipped)} unknown user id(s) of {FLAGS.users_file} (first on line '
          f'{skipped[0]})', file=sys.stderr)
  if FLAGS.out:
    print(f'{len(users)} users, top {FLAGS.k} each: {FLAGS.out}', file=sys.stderr)


def main(argv: list[str]) -> None:
  del argv
  if (FLAGS.user is None) == (FLAGS.users_file is None):
    raise ConfigError('give one of --user and --users_file')
  for name in ('out', 'skip_unknown'):
    if FLAGS[name].present and FLAGS.users_file is None:
      raise ConfigError(f'--{name} goes with --users_file')
  workdir = FLAGS.workdir
  if workdir is None and FLAGS.config is not None:
    workdir = workdir_flags.default_workdir(FLAGS[cli.CONFIG_FLAG].config_filename,
                                            FLAGS.config)
  if workdir is None:
    raise ConfigError('--workdir (or the --config of a run in its default workdir) is required')
  recommender = Recommender.from_workdir(workdir)
  if FLAGS.users_file is not None:
    _recommend_file(recommender)
    return
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
