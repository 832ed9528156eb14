"""Dot-product matrix factorisation (Rendle et al., RecSys 2020), with user, item and global
biases. Parameters: {'mf': {'user_embedding', 'item_embedding', 'user_bias', 'item_bias'},
'bias'}."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncf_jax import tables
from ncf_jax.tables import IdsKey, ParamPath, TableSpec


class MF(nn.Module):
  """Dot-product matrix factorisation with user, item and global biases.

  The baseline of Rendle et al. (RecSys 2020), "Neural Collaborative Filtering
  vs. Matrix Factorization Revisited": logit = <p_u, q_i> + b_u + b_i + b.
  No learned output weights, unlike GMF.
  """
  num_users: int
  num_items: int
  num_factors: int = 8
  embedding_stddev: float = 0.01
  embedding_sharding: str = 'replicated'
  num_devices: int = 1
  dtype: Any = jnp.float32

  def setup(self):
    self.mf = _MFTower(self.table_specs())
    self.bias = self.param('bias', nn.initializers.zeros, ())

  @nn.nowrap
  def table_specs(self) -> tuple[TableSpec, ...]:
    sizes = {'user': ('users', self.num_users), 'item': ('items', self.num_items)}
    declared = [TableSpec(('mf', f'{side}_{kind}'), ids, rows, width, stddev)
                for kind, width, stddev in (('embedding', int(self.num_factors),
                                             self.embedding_stddev), ('bias', 1, 0.0))
                for side, (ids, rows) in sizes.items()]
    return tables.plan(declared, self.embedding_sharding, self.num_devices)

  def embed(self, users: jax.Array, items: jax.Array) -> dict[str, dict[str, jax.Array]]:
    return {'mf': self.mf.embed(users, items)}

  def score(self, rows: dict[str, dict[str, jax.Array]]) -> jax.Array:
    rows = jax.tree_util.tree_map(lambda r: r.astype(self.dtype), rows['mf'])
    return (self.mf(rows) + self.bias).astype(jnp.float32)

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    return self.score(self.embed(users, items))

  @nn.nowrap
  def embedding_tables(self) -> dict[ParamPath, IdsKey]:
    return tables.ids_by_path(self.table_specs())

  @nn.nowrap
  def hidden_kernels(self) -> tuple[ParamPath, ...]:
    return ()

  @property
  def pair_width(self) -> int:
    return int(self.num_factors)

  def score_matrix(self, users: jax.Array, items: jax.Array) -> jax.Array:
    return self.score_matrix_rows(self.embed(users, items))

  def score_matrix_rows(self, rows: dict[str, dict[str, jax.Array]]) -> jax.Array:
    """`score_matrix` from gathered rows (see `NCF.score_matrix_rows`)."""
    rows = rows['mf']
    return (rows['user_embedding'] @ rows['item_embedding'].T + rows['user_bias']
            + rows['item_bias'][None, :, 0] + self.bias)


class _MFTower(nn.Module):
  specs: tuple[TableSpec, ...]

  def setup(self):
    specs = {spec.path[-1]: spec for spec in self.specs}
    self.user_embedding = specs['user_embedding'].create(self)
    self.item_embedding = specs['item_embedding'].create(self)
    self.user_bias = specs['user_bias'].create(self)
    self.item_bias = specs['item_bias'].create(self)

  def embed(self, users: jax.Array, items: jax.Array) -> dict[str, jax.Array]:
    take = lambda table, ids: jnp.take(table, ids, axis=0)
    return {'user_embedding': take(self.user_embedding, users),
            'item_embedding': take(self.item_embedding, items),
            'user_bias': take(self.user_bias, users), 'item_bias': take(self.item_bias, items)}

  def __call__(self, rows: dict[str, jax.Array]) -> jax.Array:
    dot = jnp.sum(rows['user_embedding'] * rows['item_embedding'], axis=-1)
    return dot + rows['user_bias'][:, 0] + rows['item_bias'][:, 0]
