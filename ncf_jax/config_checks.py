"""Configuration validation: the one place that decides whether a config can run.

`validate(config)` raises ConfigError naming the first field whose value cannot
work; `run_settings.read` calls it first, and the factories (`create_model`,
`create_optimizer`, ...) then trust the settings read from it.
"""

import math

import ml_collections

from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import sharding
from ncf_jax.config_fields import flat_fields
from ncf_jax.errors import ConfigError

_POSITIVE = ('batch_size', 'num_negatives', 'top_k', 'steps_per_dispatch',
             'eval_users_per_block', 'num_factors', 'learning_rate', 'embedding_stddev',
             'adam_eps')
_NON_NEGATIVE = ('num_epochs', 'l2_embeddings', 'l2_layers', 'num_devices', 'seed',
                 'log_every_seconds')
_UNIT_INTERVAL = ('adam_b1', 'adam_b2')  # decay rates: [0, 1)
_INTEGER = ('batch_size', 'num_negatives', 'top_k', 'steps_per_dispatch', 'eval_users_per_block',
            'num_factors', 'num_epochs', 'num_devices', 'seed')
# The compiled chunk holds steps_per_dispatch x batch_size examples (16 bytes each) on the host
# and the devices, and the epoch is padded to whole chunks: 2^28 is 64 times MLPerf's chunk.
MAX_CHUNK_EXAMPLES = 2**28
# The synthetic dataset's fields: (minimum, integer?).
_SYNTHETIC = dict(num_users=(1, True), num_items=(2, True), interactions_per_user=(1, True),
                  num_clusters=(1, True), popularity_exponent=(0.0, False),
                  num_test_negatives=(1, True), seed=(0, True))


def _choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f'config.{field}: unknown {field.replace("_", " ")} {value!r}; '
                      f'choose from {", ".join(choices)}')


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_layers(layers, num_factors: int) -> tuple:
  if not isinstance(layers, (tuple, list)) or not all(_is_int(w) for w in layers):
    raise ConfigError(f'config.layers={layers!r}: must be a tuple of integer widths, e.g. '
                      '--config.layers="(64,32,16,8)" (empty: from num_factors)')
  return tuple(layers) or models.default_layers(num_factors)


def _check_synthetic(synthetic, dataset: str | None, data_dir: str | None) -> None:
  """The generated dataset's fields (`synthetic`: a mapping, or None), before anything is
  generated."""
  if synthetic is None:
    return
  for field, (minimum, integer) in _SYNTHETIC.items():
    if field not in synthetic:
      continue
    value = synthetic[field]
    if integer and not _is_int(value):
      raise ConfigError(f'config.synthetic.{field}={value!r}: must be an integer')
    if value < minimum:
      raise ConfigError(f'config.synthetic.{field}={value}: must be >= {minimum}')
  if dataset != 'synthetic':
    return
  if data_dir:
    raise ConfigError(f'config.data_dir={data_dir}: config.dataset=synthetic generates '
                      'its data and reads no folder; drop data_dir or pick a dataset')
  negatives, clusters = synthetic.num_test_negatives, synthetic.num_clusters
  need = max(negatives + 2, 2 * clusters)
  if synthetic.num_items < need:
    raise ConfigError(f'config.synthetic.num_items={synthetic.num_items}: must be >= {need} '
                      f'(num_test_negatives={negatives} + 2, and 2 x num_clusters={clusters})')


def validate(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first field whose value cannot work."""
  for key, value in flat_fields(config.to_dict()).items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f'config.{key}={value}: must be a finite number')
  for field in _INTEGER:
    if field in config and not _is_int(config[field]):
      raise ConfigError(f'config.{field}={config[field]!r}: must be an integer')
  for field in _POSITIVE:
    if field in config and config[field] <= 0:
      raise ConfigError(f'config.{field}={config[field]}: must be positive')
  for field in _NON_NEGATIVE:
    if field in config and config[field] < 0:
      raise ConfigError(f'config.{field}={config[field]}: must be >= 0')
  for field, choices in (('model', tuple(models.MODELS)), ('optimizer', optimizers.OPTIMIZERS),
                         ('learning_rate_schedule', optimizers.SCHEDULES),
                         ('embedding_sharding', sharding.EMBEDDING_SHARDINGS),
                         ('compute_dtype', tuple(models.COMPUTE_DTYPES))):
    _choice(field, config[field], choices)
  for field in _UNIT_INTERVAL:
    if field in config and not 0.0 <= config[field] < 1.0:
      raise ConfigError(f'config.{field}={config[field]}: must be in [0, 1) (a decay rate)')
  chunk = config.steps_per_dispatch * config.batch_size
  if chunk > MAX_CHUNK_EXAMPLES:
    raise ConfigError(f'config.steps_per_dispatch={config.steps_per_dispatch}: a compiled chunk '
                      f'of {config.steps_per_dispatch} x batch_size {config.batch_size} = '
                      f'{chunk:,} examples is above {MAX_CHUNK_EXAMPLES:,} (16 bytes each, on '
                      'the host and every device); lower steps_per_dispatch')
  _check_synthetic(config.get('synthetic'), config.get('dataset'), config.get('data_dir'))
  if 'sampler' in config:
    _choice('sampler', config.sampler, ('host', 'device'))
  layers = _check_layers(config.layers, config.num_factors)
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
