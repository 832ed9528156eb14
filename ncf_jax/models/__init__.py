"""The models: GMF, MLP and NeuMF (He et al., 2017) and dot-product MF (Rendle et al., 2020).

Every model satisfies `ScoringModel`: `embed` gathers a batch's embedding rows
(a tree that mirrors the tables' parameter paths), `score` maps gathered rows
to logits, `__call__` is the two together, `score_matrix` scores every
(user, item) pair of two id lists, and `table_specs` describes each per-user or
per-item table once (`tables.TableSpec`: rows, padding, width, initialiser,
placement), read by the optimizers, the train step, sharding and pretraining.

One file per model (family): `ncf.py` (GMF, MLP, NeuMF), `mf.py` (MF); iALS and EASE score
as `dot_product.py`'s two-table models. A new model: its own file here, satisfying
`ScoringModel`; its entry in `MODELS`; a config; a test.
"""

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp

from ncf_jax import dot_product
from ncf_jax import kept_programs
from ncf_jax.models.mf import MF
from ncf_jax.models.ncf import GMF, MLP, NCF, GMFTower, MLPTower, NeuMF, head_init, hidden_init
from ncf_jax.tables import IdsKey, ParamPath, TableSpec

# The models' names other modules use from here (each is defined in its model's file).
__all__ = ['GMF', 'MLP', 'NCF', 'GMFTower', 'MLPTower', 'NeuMF', 'MF', 'head_init', 'hidden_init',
           'MODELS', 'COMPUTE_DTYPES', 'ModelSettings', 'ScoringModel', 'abstract_params',
           'create_model', 'default_layers', 'init_params']


class ScoringModel(Protocol):
  """What training, evaluation, recommendation and checkpoints rely on (Flax modules)."""
  num_users: int
  num_items: int

  def embed(self, users: jax.Array, items: jax.Array) -> dict:
    """The batch's embedding rows: a tree keyed like the tables in the params."""

  def score(self, rows: dict) -> jax.Array:
    """Logits (B,) from the rows `embed` gathered."""

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    """Logits (B,) for (B,) user and item ids."""

  def score_matrix(self, users: jax.Array, items: jax.Array) -> jax.Array:
    """Logits (U, I) for every pair of (U,) users and (I,) items."""

  def table_specs(self) -> tuple[TableSpec, ...]:
    """Every per-user or per-item table, planned (placement, padded rows)."""

  def embedding_tables(self) -> dict[ParamPath, IdsKey]:
    """Parameter path of every per-user or per-item table -> the ids that index it."""

  def hidden_kernels(self) -> tuple[ParamPath, ...]:
    """Paths of the hidden layers' kernels (the original's `reg_layers` applies to these)."""

  @property
  def pair_width(self) -> int:
    """The widest activation `score_matrix` holds per (user, item) pair (sizes its blocks)."""


MODELS = {'gmf': GMF, 'mlp': MLP, 'neumf': NeuMF, 'mf': MF,
          'ials': dot_product.IALS, 'ease': dot_product.EASE}  # fit by als_fit.py


def default_layers(num_factors: int) -> tuple[int, ...]:
  """The original's MLP tower for `num_factors`: (8f, 4f, 2f, f)."""
  return (8 * num_factors, 4 * num_factors, 2 * num_factors, num_factors)


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """What `create_model` builds, besides the data's sizes (run_settings reads it from a config)."""
  name: str  # a key of MODELS
  num_factors: int
  layers: tuple[int, ...] = ()  # the MLP tower; empty: default_layers(num_factors)
  embedding_stddev: float = 0.01
  embedding_sharding: str = 'replicated'  # auto | replicated | rows
  compute_dtype: str = 'float32'  # a key of COMPUTE_DTYPES


def create_model(settings: ModelSettings, num_users: int, num_items: int,
                 num_devices: int = 1) -> ScoringModel:
  """The model `settings.name` names, sized for the dataset, its tables planned for
  `num_devices` devices."""
  layers = tuple(settings.layers) or default_layers(settings.num_factors)
  model = MODELS[settings.name]
  towers = dict(layers=layers) if 'layers' in model.__dataclass_fields__ else {}  # MF has none
  return model(num_users=num_users, num_items=num_items, num_factors=settings.num_factors,
               embedding_stddev=settings.embedding_stddev,
               embedding_sharding=settings.embedding_sharding,
               num_devices=int(num_devices),
               dtype=COMPUTE_DTYPES[settings.compute_dtype], **towers)


def init_params(model: ScoringModel, seed: int | jax.Array) -> dict:
  """Fresh parameters of `model` drawn from `seed`, or from a typed random key (Flax
  initialises from a dummy batch)."""
  ids = jnp.zeros((1,), jnp.int32)
  key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
  return model.init(key, ids, ids)['params']


def abstract_params(model: ScoringModel) -> dict:
  """Shapes and dtypes of `model`'s parameters (nothing allocated; traced once for equal
  models, the containers new on every call)."""
  return jax.tree_util.tree_map(lambda leaf: leaf, kept_programs.build(_abstract_params, model))


@kept_programs.kept(maxsize=16)
def _abstract_params(model: ScoringModel) -> dict:
  key_data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  return jax.eval_shape(fresh_params(model), key_data)


@kept_programs.kept(maxsize=16)
def fresh_params(model: ScoringModel):
  """The function from a seed's random key data to fresh parameters of `model`: one Python
  function for equal models, so `jax.eval_shape` and `jax.jit` of it share one trace."""
  return lambda key_data: init_params(model, jax.random.wrap_key_data(key_data))
