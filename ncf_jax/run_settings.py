"""The one place a run's configuration is read: `read(config)` checks it and returns the plain
values (`RunSettings`) a run is built from. Every module below takes those values, never the
config; `tests/test_config_reads.py` holds the few that take it whole (checking it, the fields
that change a run, writing config.json, TensorBoard's copy).

The pieces are read alone too (`model_settings`, `data_settings`, ...): readers of a finished
run build its model and data from the config.json it wrote. Fields that configs written
before them lack get the value those runs used.
"""

import dataclasses
import json

import ml_collections

from ncf_jax import config_checks
from ncf_jax import config_fields
from ncf_jax import ials
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax.data import registry
from ncf_jax.errors import ConfigError
from ncf_jax.train_step import Regularization


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
  """The plain values the training loop reads."""
  seed: int
  num_epochs: int
  batch_size: int
  steps_per_dispatch: int
  sampler: str  # host | device: which executor computes the epoch's batches
  learning_rate: float  # named in the divergence message
  log_every_seconds: float
  top_k: int
  target_hr: float  # 0: no target


@dataclasses.dataclass(frozen=True)
class EpochSettings:
  """What an epoch's training examples are (ncf_jax/epoch.py)."""
  num_negatives: int
  reject_positives: bool  # negatives avoid the training pairs
  exclude_heldout: bool  # ... and the held-out ones


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
  top_k: int
  users_per_block: int
  full_ranking: bool


@dataclasses.dataclass(frozen=True)
class DeviceSettings:
  num_devices: int  # 0: every device that divides batch_size
  embedding_sharding: str  # auto | replicated | rows


@dataclasses.dataclass(frozen=True)
class PretrainSources:
  """A NeuMF initialised from a GMF and an MLP run (ncf_jax/pretrain.py)."""
  gmf_workdir: str
  mlp_workdir: str
  alpha: float  # the GMF tower's share of the merged head


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """Everything a run is built from, read from its config once."""
  model: models.ModelSettings
  data: registry.DataSettings
  optimizer: optimizers.OptimizerSettings
  regularization: Regularization
  training: TrainingSettings
  epoch: EpochSettings
  evaluation: EvaluationSettings
  devices: DeviceSettings
  pretrain: PretrainSources | None  # None: fresh parameters
  fit: ials.Settings | float | None  # iALS's settings, EASE's λ; None for trained models
  config_json: dict  # the config as config.json holds it (written into the run folder)

  @property
  def computing_fields(self) -> dict:
    """The fields that change what the run computes (its identity)."""
    return config_fields.computing_fields(self.config_json)


def config_json(config: ml_collections.ConfigDict) -> dict:
  """A config as the plain (JSON) dict that config.json holds."""
  return json.loads(config.to_json_best_effort())


def model_settings(config: ml_collections.ConfigDict) -> models.ModelSettings:
  # Workdirs written before these fields existed used the original's 0.01, float32 and
  # unpadded (replicated) tables.
  return models.ModelSettings(
      name=config.model, num_factors=int(config.num_factors),
      layers=tuple(int(w) for w in config.layers),
      embedding_stddev=float(config.get('embedding_stddev', 0.01)),
      embedding_sharding=config.get('embedding_sharding', 'replicated'),
      compute_dtype=config.get('compute_dtype', 'float32'))


def data_settings(config: ml_collections.ConfigDict) -> registry.DataSettings:
  synthetic = config.get('synthetic')
  return registry.DataSettings(
      dataset=config.dataset, data_dir=config.get('data_dir') or None,
      validation=bool(config.get('validation', False)), seed=config.seed,
      synthetic=tuple(sorted(synthetic.to_dict().items())) if synthetic is not None else ())


def optimizer_settings(config: ml_collections.ConfigDict) -> optimizers.OptimizerSettings:
  return optimizers.OptimizerSettings(
      name=config.optimizer, learning_rate=float(config.learning_rate),
      schedule=config.get('learning_rate_schedule', 'constant'),
      adam_b1=float(config.get('adam_b1', 0.9)), adam_b2=float(config.get('adam_b2', 0.999)),
      adam_eps=float(config.get('adam_eps', 1e-8)))


def _fit_settings(config: ml_collections.ConfigDict) -> ials.Settings | float | None:
  """iALS's settings or EASE's λ, for the models fitted by least squares."""
  if config.model == 'ials':
    for field in ('unobserved_weight', 'regularization', 'cg_steps'):
      if field not in config:
        raise ConfigError(f'config.{field} is missing: iALS needs it (see configs/ials.py)')
    if config.unobserved_weight < 0 or config.regularization < 0 or config.cg_steps < 1:
      raise ConfigError('config.unobserved_weight and config.regularization must be >= 0 and '
                        'config.cg_steps >= 1')
    return ials.Settings(float(config.unobserved_weight), float(config.regularization),
                         float(config.get('regularization_exponent', 1.0)),
                         int(config.cg_steps))
  if config.model == 'ease':
    if 'regularization' not in config or config.regularization <= 0:
      raise ConfigError('config.regularization: EASE needs a positive λ (see configs/ease.py)')
    return float(config.regularization)
  return None


def read(config: ml_collections.ConfigDict) -> RunSettings:
  """The settings of a run of `config`; ConfigError naming the first field that cannot work."""
  config_checks.validate(config)
  pretrain = None
  # A config with the pretraining fields (configs/neumf_pretrained.py) must set them:
  # otherwise it would silently fine-tune a fresh NeuMF with its SGD settings.
  if 'gmf_workdir' in config or 'mlp_workdir' in config:
    gmf_dir, mlp_dir = config.get('gmf_workdir'), config.get('mlp_workdir')
    if not gmf_dir or not mlp_dir:
      missing = 'config.mlp_workdir' if gmf_dir else 'config.gmf_workdir'
      raise ConfigError(f'{missing}: not set; pretraining needs both config.gmf_workdir and '
                        'config.mlp_workdir')
    if config.model != 'neumf':
      raise ConfigError(f'config.model={config.model!r}: pretrained GMF and MLP runs '
                        "initialise 'neumf' only")
    pretrain = PretrainSources(gmf_dir, mlp_dir, float(config.get('alpha', 0.5)))
  return RunSettings(
      model=model_settings(config), data=data_settings(config),
      optimizer=optimizer_settings(config),
      regularization=regularization(config),
      training=TrainingSettings(
          seed=int(config.seed), num_epochs=int(config.num_epochs),
          batch_size=int(config.batch_size), steps_per_dispatch=int(config.steps_per_dispatch),
          sampler=config.get('sampler', 'host'), learning_rate=float(config.learning_rate),
          log_every_seconds=float(config.log_every_seconds), top_k=int(config.top_k),
          target_hr=float(config.get('target_hr', 0.0))),
      epoch=EpochSettings(int(config.num_negatives), bool(config.reject_positives),
                          bool(config.get('exclude_heldout_from_negatives', False))),
      evaluation=EvaluationSettings(int(config.top_k), int(config.eval_users_per_block),
                                    bool(config.full_ranking)),
      devices=DeviceSettings(int(config.get('num_devices', 0)),
                             config.get('embedding_sharding', 'replicated')),
      pretrain=pretrain, fit=_fit_settings(config), config_json=config_json(config))


def regularization(config: ml_collections.ConfigDict) -> Regularization:
  return Regularization(float(config.l2_embeddings), float(config.l2_layers),
                        bool(config.get('l2_embeddings_per_example', False)))
