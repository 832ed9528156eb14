"""Dot-product models fit by solving least squares, not by SGD: iALS and EASE.

Both score a pair as <user row, item row> of two tables, so they satisfy
`models.ScoringModel` with one parameter tree,
  {'user_embedding': (users, width), 'item_embedding': (items, width)}:
- iALS (Rendle et al., 2021/22): width = `num_factors`; rows are the learned embeddings.
- EASE (Steck, 2019): width = the number of items; a user's row is its training row of the
  interaction matrix X, an item's row is column i of the item-item weights B, so
  <X_u, B_:,i> = (X B)_ui is EASE's score.
The tables are written by `ials.py` / `ease.py` through `als_fit.py`; nothing here trains.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class DotProduct(nn.Module):
  """logit(u, i) = <user_embedding[u], item_embedding[i]>, no biases."""
  num_users: int
  num_items: int
  num_factors: int = 192
  layers: Sequence[int] = ()
  embedding_stddev: float = 0.1
  row_multiple: int = 1
  dtype: Any = jnp.float32

  @property
  def width(self) -> int:
    return int(self.num_factors)

  def _table(self, name: str, num_rows: int) -> jax.Array:
    rows = -(-num_rows // self.row_multiple) * self.row_multiple
    # Rendle et al.'s iALS initialisation: N(0, stddev² / width).
    init = nn.initializers.normal(self.embedding_stddev / self.width ** 0.5)

    def padded_init(key, shape, dtype=jnp.float32):  # padding rows stay zero
      real = init(key, (num_rows, shape[1]), dtype)
      return jnp.pad(real, ((0, shape[0] - num_rows), (0, 0)))
    return self.param(name, padded_init, (rows, self.width))

  def setup(self):
    self.user_embedding = self._table('user_embedding', self.num_users)
    self.item_embedding = self._table('item_embedding', self.num_items)

  def embed(self, users: jax.Array, items: jax.Array) -> dict[str, jax.Array]:
    return {'user_embedding': jnp.take(self.user_embedding, users, axis=0),
            'item_embedding': jnp.take(self.item_embedding, items, axis=0)}

  def score(self, rows: dict[str, jax.Array]) -> jax.Array:
    return jnp.sum(rows['user_embedding'] * rows['item_embedding'], axis=-1).astype(jnp.float32)

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    return self.score(self.embed(users, items))

  def score_matrix(self, users: jax.Array, items: jax.Array) -> jax.Array:
    return (jnp.take(self.user_embedding, users, axis=0)
            @ jnp.take(self.item_embedding, items, axis=0).T)

  @nn.nowrap
  def embedding_tables(self):
    return {('user_embedding',): 'users', ('item_embedding',): 'items'}

  @nn.nowrap
  def hidden_kernels(self):
    return ()

  @property
  def pair_width(self) -> int:
    # score_matrix is one matmul; its rows, not a per-pair activation, bound its memory.
    return min(self.width, 256)


class IALS(DotProduct):
  """iALS embeddings (`ials.py`)."""


class EASE(DotProduct):
  """EASE: user rows of X and item columns of B (`ease.py`); `num_factors` is ignored."""

  @property
  def width(self) -> int:
    return int(self.num_items)
