"""Leave-one-out ranking metrics, computed on the device in blocks of users.

Rank rule (both protocols): the rank of a held-out item is the number of
candidates that score *strictly* higher. A tie is decided in the held-out
item's favour, and a copy of the held-out item among its sampled negatives
(156 rows of the NCF ML-1M file) never counts against it, because it scores
exactly the same. The original code instead lets the held-out item lose exact
ties and collapses duplicates; with continuous scores the rules differ only on
exact ties. HR@K = [rank < K]; NDCG@K = [rank < K] / log2(rank + 2).

- Sampled: each row's held-out item against its N listed negatives (99 in NCF).
- Full ranking (Krichene & Rendle, KDD 2020): against every item, except the
  user's known interactions (training and the other held-out split).
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ncf_jax.data.dataset import HeldOut

CURVE_KS = (1, 5, 10, 20)


def ranks_from_scores(heldout_scores: jax.Array, candidate_scores: jax.Array) -> jax.Array:
  """(R,) number of candidates scoring strictly above each row's held-out item."""
  return jnp.sum(candidate_scores > heldout_scores[..., None], axis=-1)


def hit_and_ndcg(ranks: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Per-row HR@k and NDCG@k from 0-based ranks."""
  hit = ranks < k
  return hit.astype(jnp.float32), jnp.where(hit, 1.0 / jnp.log2(ranks + 2.0), 0.0)


def summarize(ranks: np.ndarray, top_k: int, ks=CURVE_KS) -> dict:
  """Mean HR and NDCG at `top_k` (as 'hr', 'ndcg') and at each of `ks`."""
  ranks = np.asarray(ranks)
  out = {}
  for k in sorted({top_k, *ks}):
    hit = ranks < k
    out[f'hr@{k}'] = float(hit.mean())
    out[f'ndcg@{k}'] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
  out['hr'], out['ndcg'] = out[f'hr@{top_k}'], out[f'ndcg@{top_k}']
  return out


def _blocks(values: np.ndarray, block: int, fill) -> np.ndarray:
  """Pads axis 0 to a multiple of `block` and reshapes to (num_blocks, block, ...)."""
  pad = -len(values) % block
  values = np.concatenate([values, np.full((pad, *values.shape[1:]), fill, values.dtype)])
  return values.reshape(-1, block, *values.shape[1:])


@dataclasses.dataclass
class SampledEvaluator:
  """Ranks each held-out item among its listed negatives: one jitted call, `lax.map`
  over blocks of users and `vmap` over the users of a block."""
  model: object
  heldout: HeldOut
  users_per_block: int = 2048

  def __post_init__(self):
    block = min(self.users_per_block, len(self.heldout))
    candidates = np.concatenate([self.heldout.items[:, None], self.heldout.negatives], axis=1)
    self._users = jnp.asarray(_blocks(self.heldout.users, block, 0))
    self._candidates = jnp.asarray(_blocks(candidates.astype(np.int32), block, 0))
    model = self.model

    def score_user(params, user, items):
      return model.apply({'params': params}, jnp.full(items.shape, user), items)

    def block_ranks(params, block):
      users, candidates = block
      scores = jax.vmap(score_user, in_axes=(None, 0, 0))(params, users, candidates)
      return ranks_from_scores(scores[:, 0], scores[:, 1:])

    self._ranks = jax.jit(lambda params, users, candidates: lax.map(
        lambda b: block_ranks(params, b), (users, candidates)).reshape(-1))

  def ranks(self, params) -> jax.Array:
    """(R,) ranks, on the device."""
    return self._ranks(params, self._users, self._candidates)[:len(self.heldout)]

  def __call__(self, params, top_k: int) -> dict:
    return summarize(jax.device_get(self.ranks(params)), top_k)


@dataclasses.dataclass
class FullRankingEvaluator:
  """Ranks each held-out item among all items the user has not interacted with.

  Known interactions come as (user, item) pairs (`known_users`, `known_items`);
  per block they are scattered into a mask on the device. Blocks are sized so
  that the largest intermediate stays near `max_block_elements`.
  """
  model: object
  heldout: HeldOut
  known_users: np.ndarray
  known_items: np.ndarray
  num_items: int
  max_block_elements: int = 2**25

  def __post_init__(self):
    width = max(64, getattr(self.model, 'layers', (64,))[0])  # widest per-pair activation
    block = int(np.clip(self.max_block_elements // (self.num_items * width), 1, len(self.heldout)))
    rows = len(self.heldout)
    num_blocks = -(-rows // block)
    # Each known pair masks every held-out row of its user (a vectorised join).
    order = np.argsort(self.heldout.users, kind='stable')
    sorted_users = self.heldout.users[order]
    lo = np.searchsorted(sorted_users, self.known_users, side='left')
    hi = np.searchsorted(sorted_users, self.known_users, side='right')
    counts = hi - lo
    pair = np.repeat(np.arange(len(self.known_users)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    row = order[np.repeat(lo, counts) + offsets]
    item = self.known_items[pair]
    # Known pairs sorted by block, flat (memory ~ the number of pairs); each block reads a
    # fixed-width window from its offset and masks what lies beyond its own pairs.
    blk = row // block
    per_block = np.bincount(blk, minlength=num_blocks)
    window = max(1, int(per_block.max()) if len(per_block) else 1)
    sort = np.argsort(blk, kind='stable')
    pad = np.zeros(window, np.int32)
    self._pair_rows = jnp.asarray(np.concatenate([(row % block)[sort].astype(np.int32), pad]))
    self._pair_items = jnp.asarray(np.concatenate([item[sort].astype(np.int32), pad]))
    self._block_start = jnp.asarray((np.cumsum(per_block) - per_block).astype(np.int32))
    self._block_count = jnp.asarray(per_block.astype(np.int32))
    self._users = jnp.asarray(_blocks(self.heldout.users, block, 0))
    self._items = jnp.asarray(_blocks(self.heldout.items, block, 0))
    model, num_items = self.model, self.num_items

    def block_ranks(params, pair_rows, pair_items, b):
      users, items, start, count = b
      scores = model.apply({'params': params}, users, jnp.arange(num_items),
                           method=model.score_matrix)
      heldout = jnp.take_along_axis(scores, items[:, None], axis=1)[:, 0]
      rows = lax.dynamic_slice(pair_rows, (start,), (window,))
      rows = jnp.where(jnp.arange(window) < count, rows, block)  # beyond the block: dropped
      cols = lax.dynamic_slice(pair_items, (start,), (window,))
      known = jnp.zeros(scores.shape, bool).at[rows, cols].set(True, mode='drop')
      return ranks_from_scores(heldout, jnp.where(known, -jnp.inf, scores))

    self._ranks = jax.jit(lambda params, pair_rows, pair_items, *blocks: lax.map(
        lambda b: block_ranks(params, pair_rows, pair_items, b), blocks).reshape(-1))

  def ranks(self, params) -> jax.Array:
    return self._ranks(params, self._pair_rows, self._pair_items, self._users, self._items,
                       self._block_start, self._block_count)[:len(self.heldout)]

  def __call__(self, params, top_k: int) -> dict:
    return summarize(jax.device_get(self.ranks(params)), top_k)


def full_ranking_evaluator(model, dataset) -> FullRankingEvaluator:
  """Full ranking of `dataset.test`, excluding training and validation interactions."""
  users, items = [dataset.train_users], [dataset.train_items]
  if dataset.valid is not None:
    users.append(dataset.valid.users)
    items.append(dataset.valid.items)
  return FullRankingEvaluator(model, dataset.test, np.concatenate(users), np.concatenate(items),
                              dataset.num_items)
