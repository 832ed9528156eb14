"""A seeded synthetic implicit-feedback dataset with planted structure, made in-process.

Users and items belong to latent clusters; a user's interactions come mostly
from their own cluster, and items are Zipf-popular within and across clusters.
So popularity is a real but beatable baseline: a model that learns the
clusters ranks held-out items clearly better than ItemPop does.
"""

from typing import NamedTuple

import numpy as np

from ncf_jax.data.dataset import Dataset, HeldOut, latest_per_user, sample_distinct_negatives
from ncf_jax.data.interactions import InteractionSet

IN_CLUSTER_PROBABILITY = 0.8


def _draw_by_weight(rng, cumulative: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
  """Index j in [low, high) drawn with probability ∝ weight j, given cumulative weights."""
  start = np.where(low > 0, cumulative[np.maximum(low - 1, 0)], 0.0)
  target = start + rng.random(len(low)) * (cumulative[high - 1] - start)
  return np.minimum(np.searchsorted(cumulative, target, side='right'), high - 1)


def generate(num_users: int = 1000, num_items: int = 500, interactions_per_user: int = 40,
             num_clusters: int = 8, popularity_exponent: float = 1.0,
             num_test_negatives: int = 99, seed: int = 0, name: str = 'synthetic') -> Dataset:
  """Makes a leave-one-out split; the latest interaction of each user is the test item.

  The arguments are `config.synthetic`'s fields (and the dataset's name)."""
  if num_items < num_test_negatives + 2 or num_items < 2 * num_clusters:
    raise ValueError(f'synthetic: num_items={num_items} is too small for '
                     f'{num_test_negatives} test negatives and {num_clusters} clusters')
  rng = np.random.default_rng([seed, 0x5E7])
  world = _plant(rng, num_users, num_items, num_clusters, popularity_exponent)
  users, items = _interactions(rng, world, interactions_per_user)
  return _leave_latest_out(rng, users, items, num_users, num_items, num_test_negatives, name)


class _World(NamedTuple):
  """The planted structure: each user's cluster, and the items grouped by cluster with
  their cumulative popularity (to draw an item within a cluster)."""
  user_cluster: np.ndarray
  by_cluster: np.ndarray  # item ids, sorted by cluster
  cumulative: np.ndarray  # cumulative popularity along `by_cluster`
  bounds: np.ndarray  # cluster c's items are by_cluster[bounds[c]:bounds[c + 1]]


def _plant(rng, num_users: int, num_items: int, num_clusters: int,
           popularity_exponent: float) -> _World:
  item_cluster = rng.integers(0, num_clusters, size=num_items)
  user_cluster = rng.integers(0, num_clusters, size=num_users)
  popularity = rng.permutation(np.arange(1, num_items + 1) ** -float(popularity_exponent))
  by_cluster = np.argsort(item_cluster, kind='stable')
  return _World(user_cluster, by_cluster, np.cumsum(popularity[by_cluster]),
                np.searchsorted(item_cluster[by_cluster], np.arange(num_clusters + 1)))


def _interactions(rng, world: _World, interactions_per_user: int):
  """(users, items): each user's distinct items, mostly from the user's own cluster."""
  num_users, num_items = len(world.user_cluster), len(world.by_cluster)
  # Per-user activity varies (log-normal), at least 3 interactions.
  activity = np.maximum(3, np.round(interactions_per_user * rng.lognormal(0, 0.5, num_users)))
  activity = np.minimum(activity, num_items // 2).astype(np.int64)
  draws = (activity * 1.5 + 4).astype(np.int64)
  users = np.repeat(np.arange(num_users), draws)
  own = rng.random(len(users)) < IN_CLUSTER_PROBABILITY
  cluster = world.user_cluster[users]
  low = np.where(own, world.bounds[cluster], 0)
  high = np.where(own, world.bounds[cluster + 1], num_items)
  high = np.where(high > low, high, num_items)  # an empty cluster falls back to all items
  low = np.where(high > low, low, 0)
  items = world.by_cluster[_draw_by_weight(rng, world.cumulative, low, high)]

  # Keep each user's first `activity` distinct items, in draw order.
  keys = users * num_items + items
  _, first = np.unique(keys, return_index=True)
  first = np.sort(first)
  users, items = users[first], items[first]
  rank = np.arange(len(users)) - np.searchsorted(users, users)
  keep = rank < activity[users]
  return users[keep].astype(np.int32), items[keep].astype(np.int32)


def _leave_latest_out(rng, users, items, num_users: int, num_items: int,
                      num_test_negatives: int, name: str) -> Dataset:
  """Random timestamps; each user's latest item is held out with sampled negatives."""
  timestamps = rng.permutation(len(users)).astype(np.int64)
  last = latest_per_user(users, timestamps, num_users, rng)
  test_mask = np.zeros(len(users), dtype=bool)
  test_mask[last] = True
  seen = InteractionSet(users, items, num_users, num_items)
  negatives = sample_distinct_negatives(rng, users[last], seen, num_items, num_test_negatives)
  order = np.lexsort((items[~test_mask], users[~test_mask]))
  return Dataset(name=name, num_users=num_users, num_items=num_items,
                 train_users=users[~test_mask][order], train_items=items[~test_mask][order],
                 train_timestamps=timestamps[~test_mask][order],
                 test=HeldOut(users[last], items[last], negatives))
