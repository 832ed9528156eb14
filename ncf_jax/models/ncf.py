"""The NCF family (He et al., 2017): GMF, MLP and NeuMF, one `NCF` module whose `towers`
(a GMF tower, an MLP tower, or both) are concatenated into one logit.

Parameter trees are laid out so that pretrained towers drop into NeuMF:

  GMF:   {'gmf': {'user_embedding', 'item_embedding'}, 'head': {'kernel', 'bias'}}
  MLP:   {'mlp': {'user_embedding', 'item_embedding', 'layer_0', ...}, 'head': ...}
  NeuMF: {'gmf': ..., 'mlp': ..., 'head': ...}
"""

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncf_jax import tables
from ncf_jax.tables import IdsKey, ParamPath, TableSpec

# The original code: embeddings N(0, 0.01) (`config.embedding_stddev`); hidden
# layers Keras' default glorot-uniform; the prediction layer lecun-uniform; biases zero.
hidden_init = nn.initializers.glorot_uniform()
head_init = nn.initializers.lecun_uniform()


class GMFTower(nn.Module):
  """Generalized matrix factorisation: the element-wise product of two embeddings."""
  user_table: TableSpec
  item_table: TableSpec

  def setup(self):
    self.user_embedding = self.user_table.create(self)
    self.item_embedding = self.item_table.create(self)

  def embed(self, users: jax.Array, items: jax.Array) -> dict[str, jax.Array]:
    return {'user_embedding': jnp.take(self.user_embedding, users, axis=0),
            'item_embedding': jnp.take(self.item_embedding, items, axis=0)}

  def __call__(self, rows: dict[str, jax.Array]) -> jax.Array:
    return rows['user_embedding'] * rows['item_embedding']


class MLPTower(nn.Module):
  """Concatenated user and item embeddings through a ReLU tower.

  `layers[0]` is the concatenated embedding width (so each embedding has
  `layers[0] // 2` entries); `layers[1:]` are the hidden widths.
  """
  user_table: TableSpec
  item_table: TableSpec
  layers: Sequence[int]
  dtype: Any = jnp.float32

  def setup(self):
    self.user_embedding = self.user_table.create(self)
    self.item_embedding = self.item_table.create(self)
    self.layer = [nn.Dense(w, kernel_init=hidden_init, dtype=self.dtype) for w in self.layers[1:]]

  def embed(self, users: jax.Array, items: jax.Array) -> dict[str, jax.Array]:
    return {'user_embedding': jnp.take(self.user_embedding, users, axis=0),
            'item_embedding': jnp.take(self.item_embedding, items, axis=0)}

  def __call__(self, rows: dict[str, jax.Array]) -> jax.Array:
    x = jnp.concatenate([rows['user_embedding'], rows['item_embedding']], axis=-1)
    for dense in self.layer:
      x = nn.relu(dense(x))
    return x


class NCF(nn.Module):
  """Towers (named by `towers`) whose outputs are concatenated into one logit."""
  num_users: int
  num_items: int
  num_factors: int = 8
  layers: Sequence[int] = (64, 32, 16, 8)
  embedding_stddev: float = 0.01
  embedding_sharding: str = 'replicated'  # tables.EMBEDDING_SHARDINGS
  num_devices: int = 1  # of the mesh the tables are planned for
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32
  towers: ClassVar[tuple[str, ...]] = ()

  def setup(self):
    specs = tables.by_path(self.table_specs())
    if 'gmf' in self.towers:
      self.gmf = GMFTower(specs['gmf', 'user_embedding'], specs['gmf', 'item_embedding'])
    if 'mlp' in self.towers:
      self.mlp = MLPTower(specs['mlp', 'user_embedding'], specs['mlp', 'item_embedding'],
                          tuple(self.layers), self.dtype)
    self.head = nn.Dense(1, kernel_init=head_init, dtype=self.dtype)

  @nn.nowrap
  def table_specs(self) -> tuple[TableSpec, ...]:
    widths = {'gmf': int(self.num_factors), 'mlp': int(self.layers[0]) // 2}
    sizes = {'user': ('users', self.num_users), 'item': ('items', self.num_items)}
    declared = [TableSpec((tower, f'{side}_embedding'), ids, rows, widths[tower],
                          self.embedding_stddev)
                for tower in self.towers for side, (ids, rows) in sizes.items()]
    return tables.plan(declared, self.embedding_sharding, self.num_devices)

  def embed(self, users: jax.Array, items: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """The batch's embedding rows, keyed like the embedding tables in the params."""
    return {name: getattr(self, name).embed(users, items) for name in self.towers}

  def score(self, rows: dict[str, dict[str, jax.Array]]) -> jax.Array:
    """Logits (B,) from gathered embedding rows."""
    rows = jax.tree_util.tree_map(lambda r: r.astype(self.dtype), rows)
    h = jnp.concatenate([getattr(self, name)(rows[name]) for name in self.towers], axis=-1)
    return self.head(h)[..., 0].astype(jnp.float32)

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    """Logits (B,) for (B,) user and item ids."""
    return self.score(self.embed(users, items))

  @nn.nowrap
  def embedding_tables(self) -> dict[ParamPath, IdsKey]:
    return tables.ids_by_path(self.table_specs())

  @nn.nowrap
  def hidden_kernels(self) -> tuple[ParamPath, ...]:
    if 'mlp' not in self.towers:
      return ()
    return tuple(('mlp', f'layer_{j}', 'kernel') for j in range(len(self.layers) - 1))

  @property
  def pair_width(self) -> int:
    return int(self.layers[0]) if 'mlp' in self.towers else int(self.num_factors)

  def score_matrix(self, users: jax.Array, items: jax.Array) -> jax.Array:
    """Logits (U, I) for every pair of (U,) users and (I,) items.

    Equal to `__call__` on all pairs, but factorised: GMF becomes a matmul and
    the MLP's first layer is applied to users and items separately, which
    removes most of the arithmetic of full ranking.
    """
    return self.score_matrix_rows(self.embed(users, items))

  def score_matrix_rows(self, rows: dict[str, dict[str, jax.Array]]) -> jax.Array:
    """`score_matrix` from gathered rows: a tree like `embed`'s whose user tables hold the
    rows of U users and item tables those of I items (row-sharded full ranking hands each
    device its own items' rows)."""
    kernel = self.head.variables['params']['kernel'][:, 0]
    logits = self.head.variables['params']['bias'][0]
    offset = 0
    for name in self.towers:
      tower = getattr(self, name)
      u, i = rows[name]['user_embedding'], rows[name]['item_embedding']
      if name == 'gmf':
        w = kernel[offset:offset + u.shape[1]]
        logits = logits + (u * w[None, :]) @ i.T
        offset += u.shape[1]
        continue
      if not tower.layer:  # no hidden layer: the head sees [u; i] directly
        w = kernel[offset:offset + 2 * u.shape[1]]
        logits = logits + (u @ w[:u.shape[1]])[:, None] + (i @ w[u.shape[1]:])[None, :]
        offset += 2 * u.shape[1]
        continue
      first = tower.layer[0].variables['params']
      x = nn.relu((u @ first['kernel'][:u.shape[1]] + first['bias'][None, :])[:, None, :]
                  + (i @ first['kernel'][u.shape[1]:])[None, :, :])
      for dense in tower.layer[1:]:
        x = nn.relu(dense(x))
      logits = logits + x @ kernel[offset:offset + x.shape[-1]]
      offset += x.shape[-1]
    return logits


class GMF(NCF):
  towers = ('gmf',)


class MLP(NCF):
  towers = ('mlp',)


class NeuMF(NCF):
  towers = ('gmf', 'mlp')
