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

from ncf_jax import tables
from ncf_jax.tables import TableSpec


class DotProduct(nn.Module):
  """logit(u, i) = <user_embedding[u], item_embedding[i]>, no biases."""
  num_users: int
  num_items: int
  num_factors: int = 192
  layers: Sequence[int] = ()
  embedding_stddev: float = 0.1
  embedding_sharding: str = 'replicated'
  num_devices: int = 1
  dtype: Any = jnp.float32

  @property
  def width(self) -> int:
    return int(self.num_factors)

  @nn.nowrap
  def table_specs(self) -> tuple[TableSpec, ...]:
    # Rendle et al.'s iALS initialisation: N(0, stddev^2 / width).
    stddev = self.embedding_stddev / self.width ** 0.5
    declared = [TableSpec(('user_embedding',), 'users', self.num_users, self.width, stddev),
                TableSpec(('item_embedding',), 'items', self.num_items, self.width, stddev)]
    return tables.plan(declared, self.embedding_sharding, self.num_devices)

  def setup(self):
    specs = {spec.path[-1]: spec for spec in self.table_specs()}
    self.user_embedding = specs['user_embedding'].create(self)
    self.item_embedding = specs['item_embedding'].create(self)

  def embed(self, users: jax.Array, items: jax.Array) -> dict[str, jax.Array]:
    return {'user_embedding': jnp.take(self.user_embedding, users, axis=0),
            'item_embedding': jnp.take(self.item_embedding, items, axis=0)}

  def score(self, rows: dict[str, jax.Array]) -> jax.Array:
    return jnp.sum(rows['user_embedding'] * rows['item_embedding'], axis=-1).astype(jnp.float32)

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    return self.score(self.embed(users, items))

  def score_matrix(self, users: jax.Array, items: jax.Array) -> jax.Array:
    return self.score_matrix_rows(self.embed(users, items))

  def score_matrix_rows(self, rows: dict[str, jax.Array]) -> jax.Array:
    """`score_matrix` from U users' and I items' gathered rows (`models.NCF`'s)."""
    return rows['user_embedding'] @ rows['item_embedding'].T

  @nn.nowrap
  def embedding_tables(self):
    return tables.ids_by_path(self.table_specs())

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
