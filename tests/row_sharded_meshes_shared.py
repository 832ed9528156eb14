"""What the row-sharding checks on one device (test_row_sharded_meshes.py) and on forced
devices (row_sharded_mesh_checks.py) share: a small full-ranking problem on MF whose scores
are exact in float32 (tables of multiples of 1/4 in [-1, 1], 4 factors: every product and
sum is exact), so ties are exact and the NumPy reference must agree rank for rank."""

import flax
import jax
import numpy as np

from conftest import make_config
from ncf_jax import models
from ncf_jax.data.dataset import HeldOut

NUM_USERS, NUM_ITEMS, FACTORS = 150, 300, 4


def mf_config(embedding_sharding: str):
  return make_config(model='mf', num_factors=FACTORS, embedding_sharding=embedding_sharding)


def ranking_problem(seed: int = 0):
  """(held-out rows, known users, known items): every user once, a few known items each
  (some repeated, some equal to the held-out item, which must not count against it)."""
  rng = np.random.default_rng(seed)
  users = rng.permutation(NUM_USERS).astype(np.int32)
  items = rng.integers(0, NUM_ITEMS, NUM_USERS).astype(np.int32)
  known_users = rng.integers(0, NUM_USERS, 3000).astype(np.int32)
  known_items = rng.integers(0, NUM_ITEMS, 3000).astype(np.int32)
  known_users = np.concatenate([known_users, users[:10]])
  known_items = np.concatenate([known_items, items[:10]])
  negatives = np.zeros((NUM_USERS, 1), np.int32)  # unused by full ranking
  return HeldOut(users, items, negatives), known_users, known_items


def exact_params(model, seed: int = 1) -> dict:
  """`model`'s parameters with real table rows of multiples of 1/4 (padding rows zero) and
  a global bias of 1/2: every score is exact in float32."""
  rng = np.random.default_rng(seed)
  flat = flax.traverse_util.flatten_dict(
      jax.tree_util.tree_map(np.asarray, models.init_params(model, 0)))
  for spec in model.table_specs():
    table = np.zeros(spec.shape, np.float32)
    table[:spec.rows] = rng.integers(-4, 5, (spec.rows, spec.width)) / 4
    flat[spec.path] = table
  flat[('bias',)] = np.float32(0.5)
  return flax.traverse_util.unflatten_dict(flat)


def reference_ranks(params: dict, heldout: HeldOut, known_users, known_items) -> np.ndarray:
  """Each row's rank by a plain loop in float64: items of the user's known pairs and the
  held-out item itself excluded, ties counted against the held-out item."""
  mf = params['mf']
  p, q = mf['user_embedding'].astype(np.float64), mf['item_embedding'].astype(np.float64)
  bu, bi = mf['user_bias'][:, 0].astype(np.float64), mf['item_bias'][:, 0].astype(np.float64)
  known = {}
  for u, i in zip(known_users, known_items):
    known.setdefault(int(u), set()).add(int(i))
  ranks = []
  for u, h in zip(heldout.users, heldout.items):
    scores = p[u] @ q[:NUM_ITEMS].T + bu[u] + bi[:NUM_ITEMS] + float(params['bias'])
    rank = 0
    for j in range(NUM_ITEMS):
      if j != h and j not in known.get(int(u), ()) and scores[j] >= scores[h]:
        rank += 1
    ranks.append(rank)
  return np.array(ranks)


def metrics(ranks: np.ndarray, k: int = 10) -> tuple[float, float]:
  """HR@k and NDCG@k by their definitions."""
  hits = [r < k for r in ranks]
  gains = [1 / np.log2(r + 2) if r < k else 0.0 for r in ranks]
  return float(np.mean(hits)), float(np.mean(gains))
