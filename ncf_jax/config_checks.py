"""Configuration validation: the one place that decides whether a config can run.

`validate(config)` raises ConfigError naming the first field whose value cannot
work; the factories (`create_model`, `create_optimizer`, ...) then trust it.
"""

import math

import ml_collections

from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import sharding
from ncf_jax.errors import ConfigError

_POSITIVE = ('batch_size', 'num_negatives', 'top_k', 'steps_per_dispatch',
             'eval_users_per_block', 'num_factors', 'learning_rate', 'embedding_stddev')
_NON_NEGATIVE = ('num_epochs', 'l2_embeddings', 'l2_layers', 'num_devices')


def _flat_items(config: ml_collections.ConfigDict, prefix: str = ''):
  """(dotted key, value) of every leaf field."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flat_items(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def _choice(config, field: str, choices) -> None:
  if config[field] not in choices:
    raise ConfigError(f'config.{field}: unknown {field.replace("_", " ")} {config[field]!r}; '
                      f'choose from {", ".join(choices)}')


def validate(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first field whose value cannot work."""
  for key, value in _flat_items(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f'config.{key}={value}: must be a finite number')
  for field in _POSITIVE:
    if field in config and config[field] <= 0:
      raise ConfigError(f'config.{field}={config[field]}: must be positive')
  for field in _NON_NEGATIVE:
    if field in config and config[field] < 0:
      raise ConfigError(f'config.{field}={config[field]}: must be >= 0')
  _choice(config, 'model', tuple(models.MODELS))
  _choice(config, 'optimizer', optimizers.OPTIMIZERS)
  _choice(config, 'learning_rate_schedule', optimizers.SCHEDULES)
  _choice(config, 'embedding_sharding', sharding.EMBEDDING_SHARDINGS)
  _choice(config, 'compute_dtype', tuple(models.COMPUTE_DTYPES))
  if 'sampler' in config:
    _choice(config, 'sampler', ('host', 'device'))
  layers = tuple(config.layers) or models.default_layers(config.num_factors)
  if layers[0] % 2 or any(w <= 0 for w in layers):
    raise ConfigError(f'config.layers={layers}: widths must be positive and the first '
                      '(user + item embedding width) even')
  if (optimizers.is_row_sparse(config.optimizer) and config.l2_embeddings
      and not config.l2_embeddings_per_example):
    raise ConfigError(f'config.optimizer={config.optimizer} never visits whole embedding '
                      'tables: with config.l2_embeddings set config.l2_embeddings_per_example=True')
  if 'alpha' in config and not 0.0 <= config.alpha <= 1.0:
    raise ConfigError(f'config.alpha={config.alpha}: must be in [0, 1]')
  if not 0.0 <= config.get('target_hr', 0.0) <= 1.0:
    raise ConfigError(f'config.target_hr={config.target_hr}: must be in [0, 1] (0 = no target)')
  if config.get('exclude_heldout_from_negatives') and not config.reject_positives:
    raise ConfigError('config.exclude_heldout_from_negatives=True needs '
                      'config.reject_positives=True: uniform negatives reject nothing')
