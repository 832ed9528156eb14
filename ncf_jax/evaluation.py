"""Leave-one-out ranking metrics, computed on the device in blocks of users.

Rank rule (both protocols): the rank of a held-out item is the number of
candidates that score *greater than or equal to* it, so every tie counts
against the held-out item, as in the original code (which lets it lose exact
ties). Copies of the held-out item among its own candidates (156 rows of the
NCF ML-1M file list it among its 99 negatives) are excluded by item id, so
they never count against it. A model that gives every candidate one score
(collapsed, saturated, all-zero) therefore ranks last: HR@K = 0. Non-finite
scores are an error (`NonFiniteError`), never a hit. HR@K = [rank < K];
NDCG@K = [rank < K] / log2(rank + 2).

- Sampled: each row's held-out item against its N listed negatives (99 in NCF).
- Full ranking (Krichene & Rendle, KDD 2020): against every item, except the
  user's known interactions (training and the other held-out split).

`top_k` must be smaller than the number of candidates of every row (held-out
item included): otherwise every model, a random one too, scores HR = 1.
"""

import dataclasses

import flax
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
import numpy as np

from ncf_jax import kept_programs
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import row_sharded
from ncf_jax import sharding
from ncf_jax import statistics
from ncf_jax import tables as tables_lib
from ncf_jax.data.dataset import Dataset, HeldOut
from ncf_jax.errors import ConfigError, NonFiniteError

CURVE_KS = (1, 5, 10, 20)


def ranks_from_scores(heldout_scores: jax.Array, candidate_scores: jax.Array,
                      counted: jax.Array) -> jax.Array:
  """(R,) number of counted candidates scoring >= each row's held-out item.

  `candidate_scores` and `counted` are (R, C); `counted` is False where a
  candidate is not to be ranked (a copy of the held-out item, a known item).
  Works on NumPy and JAX arrays alike.
  """
  return (((candidate_scores >= heldout_scores[..., None]) & counted).sum(axis=-1))


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


def check_top_k(top_k: int, num_candidates: int, what: str) -> None:
  """ConfigError unless `top_k` is below the fewest candidates a row of `what` has."""
  if top_k >= num_candidates:
    raise ConfigError(f'config.top_k={top_k}: must be smaller than the number of candidates, '
                      f'but some {what} rows rank only {num_candidates} (every model would '
                      f'score HR@{top_k} = 1)')


def _host_ranks(ranks: jax.Array, nonfinite: jax.Array, num_rows: int, what: str) -> np.ndarray:
  """(num_rows,) ranks on the host; the one device-to-host transfer of an evaluation."""
  ranks, nonfinite = jax.device_get((ranks, nonfinite))
  if nonfinite:
    raise NonFiniteError(f'{what} evaluation: the model scored {int(nonfinite)} '
                         'candidates NaN or infinite (a diverged or damaged model)')
  return np.asarray(ranks[:num_rows])


def _summary(ranks: jax.Array, nonfinite: jax.Array, num_rows: int, top_k: int,
             num_candidates: int, what: str) -> dict:
  """Host-side metrics of one evaluation, with the 95% bootstrap intervals over users
  (`statistics.interval_fields`) of HR and NDCG at `top_k`."""
  check_top_k(top_k, num_candidates, what)
  ranks = _host_ranks(ranks, nonfinite, num_rows, what)
  return dict(summarize(ranks, top_k, [k for k in CURVE_KS if k < num_candidates]),
              **statistics.interval_fields(ranks, top_k))


def _blocks(values: np.ndarray, block: int, fill) -> np.ndarray:
  """Pads axis 0 to a multiple of `block` and reshapes to (num_blocks, block, ...)."""
  pad = -len(values) % block
  values = np.concatenate([values, np.full((pad, *values.shape[1:]), fill, values.dtype)])
  return values.reshape(-1, block, *values.shape[1:])


def _real_rows(num_rows: int, block: int) -> np.ndarray:
  """(num_blocks, block) True for rows that are not padding."""
  return _blocks(np.ones(num_rows, bool), block, False)


def _block_size(users_per_block: int, num_rows: int, layout: sharding.Layout) -> int:
  """Users per block: at most `users_per_block` (and the rows), a multiple of the devices."""
  block = max(1, min(users_per_block, num_rows))
  return -(-block // layout.num_devices) * layout.num_devices


def _by_user(layout: sharding.Layout, values: np.ndarray) -> jax.Array:
  """(blocks, users, ...) arrays: each block's users split over the devices."""
  return layout.put_global(values, P(None, sharding.DATA))


def _count_nonfinite(scores: jax.Array, real: jax.Array) -> jax.Array:
  return jnp.sum(~jnp.isfinite(scores) & real[:, None])


@dataclasses.dataclass
class SampledEvaluator:
  """Ranks each held-out item among its listed negatives: one jitted call, `lax.map`
  over blocks of users and `vmap` over the users of a block."""
  model: object
  heldout: HeldOut
  users_per_block: int = 2048
  what: str = 'test'
  layout: sharding.Layout | None = None  # default: one device
  num_items: int = 0  # > 0: also the corrected HR (`statistics.corrected_hr`) against them

  def __post_init__(self):
    layout = self.layout or sharding.single_device_layout()
    block = _block_size(self.users_per_block, len(self.heldout), layout)
    candidates = np.concatenate([self.heldout.items[:, None], self.heldout.negatives], axis=1)
    counted = self.heldout.negatives != self.heldout.items[:, None]
    # The fewest candidates any row ranks: its held-out item and its other negatives.
    self.num_candidates = 1 + int(counted.sum(axis=1).min())
    self._users = _by_user(layout, _blocks(self.heldout.users, block, 0))
    self._candidates = _by_user(layout, _blocks(candidates.astype(np.int32), block, 0))
    self._counted = _by_user(layout, _blocks(counted, block, False))
    self._real = _by_user(layout, _real_rows(len(self.heldout), block))
    self._ranks = kept_programs.build(_sampled_ranks_program, self.model, layout)

  def ranks(self, params) -> tuple[jax.Array, jax.Array]:
    """((R',) ranks, the number of non-finite scores), on the device (R' >= R: padding)."""
    return self._ranks(params, self._users, self._candidates, self._counted, self._real)

  def user_ranks(self, params) -> np.ndarray:
    """(R,) each row's sampled rank on the host (NonFiniteError on a non-finite score)."""
    return _host_ranks(*self.ranks(params), len(self.heldout), self.what)

  def __call__(self, params, top_k: int) -> dict:
    ranks, nonfinite = self.ranks(params)
    out = _summary(ranks, nonfinite, len(self.heldout), top_k, self.num_candidates, self.what)
    if self.num_items:  # Krichene & Rendle's BV correction towards full-ranking HR
      out['corrected_hr'] = statistics.corrected_hr(
          _host_ranks(ranks, nonfinite, len(self.heldout), self.what),
          self.heldout.negatives.shape[1], self.num_items - 1, top_k)
    return out


@kept_programs.kept(maxsize=16)
def _sampled_ranks_program(model, layout: sharding.Layout):
  """The jitted (params, users, candidates, counted, real) -> (ranks, non-finite count) of
  `SampledEvaluator`."""
  if row_sharded.has_row_sharded(getattr(model, 'table_specs', tuple)()):
    return _routed_sampled_ranks(model, layout)

  def score_user(params, user, items):
    return model.apply({'params': params}, jnp.full(items.shape, user), items)

  def block_ranks(params, block):
    users, candidates, counted, real = block
    scores = jax.vmap(score_user, in_axes=(None, 0, 0))(params, users, candidates)
    return (ranks_from_scores(scores[:, 0], scores[:, 1:], counted),
            _count_nonfinite(scores, real))

  def all_ranks(params, *blocks):
    ranks, nonfinite = lax.map(lambda b: block_ranks(params, b), blocks)
    return ranks.reshape(-1), nonfinite.sum()

  return jax.jit(all_ranks, out_shardings=layout.replicated)


def _routed_sampled_ranks(model, layout: sharding.Layout):
  """`SampledEvaluator`'s ranks with row-sharded tables: each device scores its users'
  candidates with rows fetched from their owners (`row_sharded.score`), no table gathered."""
  abstract = models.abstract_params(model)
  param_specs = jax.tree_util.tree_map(
      lambda s: s.spec, layout.state_shardings(abstract, model.table_specs()))
  by_user = P(None, sharding.DATA)

  def local_ranks(params, users, candidates, counted, real):
    def block_ranks(block):
      users, candidates, counted, real = block
      scores = row_sharded.score(model, params, jnp.repeat(users, candidates.shape[1]),
                                 candidates.reshape(-1), layout.num_devices)
      scores = scores.reshape(candidates.shape)
      return (ranks_from_scores(scores[:, 0], scores[:, 1:], counted),
              _count_nonfinite(scores, real))

    ranks, nonfinite = lax.map(block_ranks, (users, candidates, counted, real))
    return ranks, lax.psum(nonfinite.sum(), sharding.DATA)

  mapped = jax.shard_map(local_ranks, mesh=layout.mesh,
                         in_specs=(param_specs, by_user, by_user, by_user, by_user),
                         out_specs=(by_user, P()))

  def all_ranks(params, *blocks):
    ranks, nonfinite = mapped(params, *blocks)
    return ranks.reshape(-1), nonfinite

  return jax.jit(all_ranks, out_shardings=layout.replicated)


@kept_programs.kept(maxsize=16)
def _full_ranking_program(model, num_items: int, block: int, window: int,
                          layout: sharding.Layout):
  """The jitted (params, pair rows, pair items, *blocks) -> (ranks, non-finite count) of
  full ranking: each block of users scores every item, masks its known pairs (read from a
  `window` at the block's offset) and the held-out item itself, and ranks the held-out item."""

  def block_ranks(params, pair_rows, pair_items, b):
    users, items, start, count, real = b
    scores = model.apply({'params': params}, users, jnp.arange(num_items),
                         method=model.score_matrix)
    heldout = jnp.take_along_axis(scores, items[:, None], axis=1)[:, 0]
    rows = lax.dynamic_slice(pair_rows, (start,), (window,))
    rows = jnp.where(jnp.arange(window) < count, rows, block)  # beyond the block: dropped
    cols = lax.dynamic_slice(pair_items, (start,), (window,))
    known = jnp.zeros(scores.shape, bool).at[rows, cols].set(True, mode='drop')
    counted = ~known & (jnp.arange(num_items)[None, :] != items[:, None])
    return ranks_from_scores(heldout, scores, counted), _count_nonfinite(scores, real)

  def all_ranks(params, pair_rows, pair_items, *blocks):
    ranks, nonfinite = lax.map(lambda b: block_ranks(params, pair_rows, pair_items, b), blocks)
    return ranks.reshape(-1), nonfinite.sum()

  return jax.jit(all_ranks, out_shardings=layout.replicated)


def items_per_device(model, num_items: int, num_devices: int) -> int:
  """Items each device scores in row-sharded full ranking: a row-sharded item table's rows
  per device (device d scores the items it owns, [d * S, (d + 1) * S)); with only
  replicated item tables, an even split of the items."""
  shards = {spec.shard_rows(num_devices) for spec in model.table_specs()
            if spec.ids == 'items' and spec.placement == 'rows'}
  if len(shards) > 1:
    raise ValueError(f'item tables split unevenly over {num_devices} devices: {shards}')
  return shards.pop() if shards else -(-num_items // num_devices)


@kept_programs.kept(maxsize=16)
def _routed_full_ranking_program(model, num_items: int, block: int, window: int,
                                 layout: sharding.Layout):
  """`_full_ranking_program` with row-sharded tables, no table gathered: each device scores
  every user of a block against its own S items (`items_per_device`: rows it owns, padding
  rows excluded) and counts those scoring >= the held-out item; a user's rank is the sum of
  the devices' counts (psum). The block's users are split over the devices, their rows
  fetched from their owners (`row_sharded.fetch`) and all-gathered (block-sized); the
  held-out item's score comes from the device owning it (psum of it and zeros: exact)."""
  num_devices = layout.num_devices
  per_device = items_per_device(model, num_items, num_devices)
  specs = tables_lib.by_path(model.table_specs())
  abstract = models.abstract_params(model)
  param_specs = jax.tree_util.tree_map(
      lambda s: s.spec, layout.state_shardings(abstract, model.table_specs()))
  by_user = P(None, sharding.DATA)
  everywhere = P()

  def local_ranks(params, pair_rows, pair_items, users, items, start, count, real):
    table_params, rest = optimizers.split_tables(params, specs)
    first = lax.axis_index(sharding.DATA) * per_device
    mine = first + jnp.arange(per_device)  # global ids of this device's items
    scored = mine < num_items  # padding rows never count

    def block_ranks(b):
      users, items, start, count, real = b
      rows = {}
      for path, spec in specs.items():
        table = table_params[path]
        if spec.ids == 'items':  # this device's items: its shard, or its slice of a copy
          rows[path] = (table if spec.placement == 'rows' else
                        jnp.take(table, mine, axis=0, mode='fill', fill_value=0))
          continue
        local = (row_sharded.fetch(table, users, num_devices, table.dtype)
                 if spec.placement == 'rows' else jnp.take(table, users, axis=0))
        rows[path] = lax.all_gather(local, sharding.DATA, tiled=True)  # the block's users
      items = lax.all_gather(items, sharding.DATA, tiled=True)
      real = lax.all_gather(real, sharding.DATA, tiled=True)
      scores = model.apply({'params': row_sharded.with_placeholders(rest, specs)},
                           flax.traverse_util.unflatten_dict(rows),
                           method=model.score_matrix_rows)  # (U, S)
      column = items - first
      owned = (column >= 0) & (column < per_device)
      found = jnp.take_along_axis(scores, jnp.clip(column, 0, per_device - 1)[:, None],
                                  axis=1)[:, 0]
      heldout = lax.psum(jnp.where(owned, found, jnp.zeros((), scores.dtype)), sharding.DATA)
      pair_row = lax.dynamic_slice(pair_rows, (start,), (window,))
      pair_row = jnp.where(jnp.arange(window) < count, pair_row, block)  # not this block's
      pair_col = lax.dynamic_slice(pair_items, (start,), (window,)) - first
      pair_col = jnp.where((pair_col >= 0) & (pair_col < per_device), pair_col, per_device)
      known = jnp.zeros(scores.shape, bool).at[pair_row, pair_col].set(True, mode='drop')
      counted = ~known & (mine[None, :] != items[:, None]) & scored[None, :]
      ranks = lax.psum(ranks_from_scores(heldout, scores, counted), sharding.DATA)
      nonfinite = jnp.sum(~jnp.isfinite(scores) & real[:, None] & scored[None, :])
      return ranks, lax.psum(nonfinite, sharding.DATA)

    ranks, nonfinite = lax.map(block_ranks, (users, items, start, count, real))
    return ranks.reshape(-1), nonfinite.sum()

  mapped = jax.shard_map(local_ranks, mesh=layout.mesh,
                         in_specs=(param_specs, everywhere, everywhere, by_user, by_user,
                                   everywhere, everywhere, by_user),
                         out_specs=(everywhere, everywhere))
  return jax.jit(mapped, out_shardings=layout.replicated)


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
  what: str = 'full-ranking test'
  layout: sharding.Layout | None = None  # default: one device

  def __post_init__(self):
    layout = self.layout or sharding.single_device_layout()
    width = max(64, self.model.pair_width)  # the widest per-pair activation of full ranking
    rows = len(self.heldout)
    routed = (row_sharded.has_row_sharded(getattr(self.model, 'table_specs', tuple)())
              and hasattr(self.model, 'score_matrix_rows'))
    scored = (items_per_device(self.model, self.num_items, layout.num_devices) if routed
              else self.num_items)  # items each device scores per user
    block = _block_size(self.max_block_elements // (scored * width), rows, layout)
    row, item = self._known_pairs_by_row()
    self.num_candidates = self._fewest_candidates(row, item)
    window = self._place_known_pairs(layout, row, item, block)
    self.users_per_block, self.window = block, window
    self._users = _by_user(layout, _blocks(self.heldout.users, block, 0))
    self._items = _by_user(layout, _blocks(self.heldout.items, block, 0))
    self._real = _by_user(layout, _real_rows(rows, block))
    program = _routed_full_ranking_program if routed else _full_ranking_program
    self._ranks = kept_programs.build(program, self.model, self.num_items, block, window, layout)

  def _place_known_pairs(self, layout: sharding.Layout, row: np.ndarray, item: np.ndarray,
                         block: int) -> int:
    """Puts the known pairs on the devices sorted by block, flat (memory ~ the number of
    pairs), with each block's offset and count; returns the fixed window a block reads
    from its offset (it masks what lies beyond its own pairs)."""
    num_blocks = -(-len(self.heldout) // block)
    blk = row // block
    per_block = np.bincount(blk, minlength=num_blocks)
    window = max(1, int(per_block.max()) if len(per_block) else 1)
    sort = np.argsort(blk, kind='stable')
    pad = np.zeros(window, np.int32)
    everywhere = lambda values: layout.put_global(values, P())
    self._pair_rows = everywhere(np.concatenate([(row % block)[sort].astype(np.int32), pad]))
    self._pair_items = everywhere(np.concatenate([item[sort].astype(np.int32), pad]))
    self._block_start = everywhere((np.cumsum(per_block) - per_block).astype(np.int32))
    self._block_count = everywhere(per_block.astype(np.int32))
    return window

  def _known_pairs_by_row(self) -> tuple[np.ndarray, np.ndarray]:
    """(held-out row, item) for every known pair of that row's user (a vectorised join)."""
    order = np.argsort(self.heldout.users, kind='stable')
    sorted_users = self.heldout.users[order]
    lo = np.searchsorted(sorted_users, self.known_users, side='left')
    hi = np.searchsorted(sorted_users, self.known_users, side='right')
    counts = hi - lo
    pair = np.repeat(np.arange(len(self.known_users)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[np.repeat(lo, counts) + offsets], self.known_items[pair]

  def _fewest_candidates(self, row: np.ndarray, item: np.ndarray) -> int:
    """Items a row ranks: all but its user's distinct known items other than its own."""
    other = item != self.heldout.items[row]
    keys = np.unique(row[other].astype(np.int64) * self.num_items + item[other])
    known = np.bincount(keys // self.num_items, minlength=len(self.heldout))
    return int(self.num_items - known.max())

  def inputs(self) -> tuple:
    """The device arrays the program takes after the params (known pairs, blocks)."""
    return (self._pair_rows, self._pair_items, self._users, self._items, self._block_start,
            self._block_count, self._real)

  def lower(self, params, program=None):
    """The jitted program (or another of the same signature) lowered for `params` (arrays
    or ShapeDtypeStructs with shardings): what the communication benchmark compiles."""
    return (program or self._ranks).lower(params, *self.inputs())

  def ranks(self, params) -> tuple[jax.Array, jax.Array]:
    """((R',) ranks, the number of non-finite scores), on the device (R' >= R: padding)."""
    return self._ranks(params, *self.inputs())

  def user_ranks(self, params) -> np.ndarray:
    """(R,) each row's full-ranking rank on the host (NonFiniteError on a non-finite score)."""
    return _host_ranks(*self.ranks(params), len(self.heldout), self.what)

  def __call__(self, params, top_k: int) -> dict:
    return _summary(*self.ranks(params), len(self.heldout), top_k, self.num_candidates,
                    self.what)


def full_ranking_evaluator(model, dataset: Dataset,
                           layout: sharding.Layout | None = None) -> FullRankingEvaluator:
  """Full ranking of `dataset.test`, excluding training and validation interactions."""
  users, items = [dataset.train_users], [dataset.train_items]
  if dataset.valid is not None:
    users.append(dataset.valid.users)
    items.append(dataset.valid.items)
  return FullRankingEvaluator(model, dataset.test, np.concatenate(users), np.concatenate(items),
                              dataset.num_items, layout=layout)


def item_popularity(dataset: Dataset, top_k: int) -> dict:
  """The ItemPop baseline: test items ranked by their training popularity, same rule."""
  popularity = dataset.item_popularity
  test = dataset.test
  counted = test.negatives != test.items[:, None]
  ranks = ranks_from_scores(popularity[test.items], popularity[test.negatives], counted)
  return summarize(ranks, top_k)
