"""`train_and_evaluate(config, workdir)`: the whole training run, callable from a notebook."""

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncf_jax import checkpoints as checkpoints_lib
from ncf_jax import evaluation
from ncf_jax import feeder
from ncf_jax import metric_log
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import train_step as train_step_lib
from ncf_jax.data import registry
from ncf_jax.data.ncf_format import atomic_write_text
from ncf_jax.errors import ConfigError, NonFiniteError


def _flat_items(config, prefix: str = ''):
  """(dotted key, value) of every leaf field of a ConfigDict."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _flat_items(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value cannot work."""
  for key, value in _flat_items(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f'config.{key}={value}: must be a finite number')
  positive = ('batch_size', 'num_negatives', 'top_k', 'steps_per_dispatch',
              'eval_users_per_block', 'num_factors', 'learning_rate')
  for field in positive:
    if config[field] <= 0:
      raise ConfigError(f'config.{field}={config[field]}: must be positive')
  if config.num_epochs < 0:
    raise ConfigError(f'config.num_epochs={config.num_epochs}: must be >= 0')
  if config.model not in models.MODELS:
    raise ConfigError(f'config.model: unknown model {config.model!r}; choose from '
                      f'{models.MODELS}')
  if config.optimizer not in optimizers.OPTIMIZERS:
    raise ConfigError(f'config.optimizer: unknown optimizer {config.optimizer!r}; choose from '
                      f'{optimizers.OPTIMIZERS}')
  models.resolve_layers(config.num_factors, config.layers)
  optimizers.learning_rate_schedule(config, 1)
  if (optimizers.is_lazy(config) and config.l2_embeddings
      and not config.l2_embeddings_per_example):
    raise ConfigError(f'config.optimizer={config.optimizer} never visits whole embedding '
                      'tables: with config.l2_embeddings set config.l2_embeddings_per_example=True')


def _format_metrics(record: dict) -> str:
  parts = [f"epoch {record['epoch']:3d}"]
  if record.get('loss') is not None:
    parts.append(f"loss {record['loss']:.4f}")
  parts.append(f"HR@{record['top_k']} {record['hr']:.4f}  NDCG@{record['top_k']} "
               f"{record['ndcg']:.4f}")
  if 'valid_hr' in record:
    parts.append(f"valid HR {record['valid_hr']:.4f} NDCG {record['valid_ndcg']:.4f}")
  if 'full_hr' in record:
    parts.append(f"full-rank HR {record['full_hr']:.4f} NDCG {record['full_ndcg']:.4f}")
  if record.get('train_seconds') is not None:
    parts.append(f"train {record['train_seconds']:.1f}s ({record['samples_per_second'] / 1e6:.2f}M/s)")
  parts.append(f"eval {record['eval_seconds']:.2f}s")
  return '  '.join(parts)


class _Evaluators:
  """The evaluations run after each epoch (test; validation and full ranking if configured)."""

  def __init__(self, config, dataset, model):
    self.top_k = config.top_k
    blocks = config.eval_users_per_block
    self.test = evaluation.SampledEvaluator(model, dataset.test, blocks)
    self.valid = (evaluation.SampledEvaluator(model, dataset.valid, blocks, what='validation')
                  if dataset.valid is not None else None)
    self.full = evaluation.full_ranking_evaluator(model, dataset) if config.full_ranking else None
    for evaluator in (self.test, self.valid, self.full):
      if evaluator is not None:  # before anything trains or is written
        evaluation.check_top_k(self.top_k, evaluator.num_candidates, evaluator.what)

  def __call__(self, params) -> dict:
    test = self.test(params, self.top_k)
    out = dict(hr=test['hr'], ndcg=test['ndcg'], test=test)
    if self.valid is not None:
      valid = self.valid(params, self.top_k)
      out.update(valid_hr=valid['hr'], valid_ndcg=valid['ndcg'], valid=valid)
    if self.full is not None:
      full = self.full(params, self.top_k)
      out.update(full_hr=full['hr'], full_ndcg=full['ndcg'], full=full)
    return out

  @property
  def selection(self) -> str:
    return 'validation' if self.valid is not None else 'test'

  def selection_metric(self, record: dict) -> float:
    return record['valid_hr'] if self.valid is not None else record['hr']


def _initial_params(config, model, key, dummy):
  params = model.init(key, dummy, dummy)['params']
  # A config with the pretraining fields (configs/neumf_pretrained.py) must set them:
  # otherwise it would silently fine-tune a fresh NeuMF with its SGD settings.
  if 'gmf_workdir' in config or 'mlp_workdir' in config:
    from ncf_jax import pretrain  # pylint: disable=g-import-not-at-top
    params = pretrain.merged_params(config, jax.eval_shape(lambda: params))
  return params


def _changed_fields(saved_path: str, config: ml_collections.ConfigDict) -> list[str]:
  """Fields (other than num_epochs and logging) whose value differs from the saved config."""
  if not os.path.exists(saved_path):
    return []
  with open(saved_path, encoding='utf-8') as f:
    saved = json.load(f)
  current = json.loads(config.to_json_best_effort())
  ignore = {'num_epochs', 'log_every_seconds'}
  return sorted(k for k in set(saved) | set(current)
                if k not in ignore and saved.get(k) != current.get(k))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains `config.model` on `config.dataset`, evaluating before training and after
  every epoch, checkpointing into `workdir` and resuming from it.

  Returns (final train state, list of metric records).
  """
  start_time = time.time()
  validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  dataset = registry.load_dataset(config)
  model = models.create_model(config, dataset.num_users, dataset.num_items)
  tx = optimizers.create_optimizer(config, _total_steps(config, dataset))
  dummy = jnp.zeros((1,), jnp.int32)

  def init_state(key):
    return train_step_lib.init_state(_initial_params(config, model, key, dummy), tx,
                                       config.optimizer)

  key = jax.random.key(config.seed)
  abstract_state = train_step_lib.abstract_init_state(model, tx, config.optimizer)
  evaluators = _Evaluators(config, dataset, model)
  ckpts = checkpoints_lib.Checkpoints(workdir)
  log = metric_log.MetricLog(workdir)
  config_json = config.to_json_best_effort(indent=2, sort_keys=True)
  print(f'{dataset.name}: {dataset.num_users} users, {dataset.num_items} items, '
        f'{dataset.num_train} training positives; model {config.model}, workdir {workdir}',
        flush=True)

  try:
    if ckpts.latest_epoch() is not None:
      state, done_epoch = ckpts.restore_latest(abstract_state)
      history = log.keep_through(done_epoch)
      print(f'resuming after epoch {done_epoch} from {ckpts.directory}', flush=True)
      changed = _changed_fields(os.path.join(workdir, 'config.json'), config)
      if changed:
        print(f'note: config differs from the run being resumed in: {", ".join(changed)}',
              flush=True)
    else:
      state, done_epoch = init_state(key), 0
      history = log.keep_through(-1)
      t0 = time.time()
      record = dict(epoch=0, step=0, top_k=config.top_k, loss=None, **evaluators(state['params']))
      record.update(eval_seconds=time.time() - t0, train_seconds=None, samples_per_second=None,
                    elapsed_seconds=time.time() - start_time)
      history.append(log.append(record))
      print(_format_metrics(record), flush=True)
      ckpts.save(0, state, is_best=True)
    atomic_write_text(os.path.join(workdir, 'config.json'), config_json + '\n')

    state = _train_epochs(config, dataset, model, tx, state, done_epoch, evaluators, ckpts, log,
                          history, start_time)
  finally:
    ckpts.close()

  best = max(history, key=evaluators.selection_metric)  # the first epoch to reach the max
  print(f"best epoch {best['epoch']} (selected on {evaluators.selection}): "
        f"test HR@{config.top_k} {best['hr']:.4f} NDCG@{config.top_k} {best['ndcg']:.4f}",
        flush=True)
  return state, history


def _total_steps(config, dataset) -> int:
  """Optimizer steps in the whole run (the end of a decaying learning-rate schedule)."""
  return config.num_epochs * feeder.num_batches_per_epoch(dataset.num_train, config.num_negatives,
                                                         config.batch_size)


def _check_finite(metrics: dict, epoch: int, config) -> None:
  """NonFiniteError if the chunk's loss or parameters went NaN or infinite."""
  if metrics['nonfinite']:
    raise NonFiniteError(
        f'epoch {epoch}: training diverged (the loss or parameters became NaN or infinite); '
        f'nothing of epoch {epoch} was saved. The likely cause is the learning rate '
        f'(config.learning_rate={config.learning_rate:g}): run the same command with a smaller '
        f'one to resume after epoch {epoch - 1}')


def _train_epochs(config, dataset, model, tx, state, done_epoch, evaluators, ckpts, log, history,
                  start_time):
  """Epochs done_epoch+1 .. num_epochs: train, evaluate, log, checkpoint."""
  chunk_size = config.steps_per_dispatch
  train_chunk = train_step_lib.make_train_chunk(model, tx, config,
                                                _total_steps(config, dataset))
  epochs = feeder.iterate_epochs(dataset, config.num_negatives, config.batch_size, config.seed,
                                 done_epoch + 1, config.num_epochs, config.reject_positives,
                                 batch_multiple=chunk_size)
  real_batches = -(-dataset.num_train * (1 + config.num_negatives) // config.batch_size)
  while True:
    t0 = time.time()
    try:
      epoch, batches = next(epochs)  # waits only if sampling is slower than training
    except StopIteration:
      return state
    totals, last_log = None, time.time()
    for start in range(0, real_batches, chunk_size):
      num_steps = min(chunk_size, real_batches - start)
      state, metrics = train_chunk(state, batches.chunk(start, chunk_size), np.int32(num_steps))
      totals = metrics if totals is None else jax.tree_util.tree_map(jnp.add, totals, metrics)
      if config.log_every_seconds and time.time() - last_log > config.log_every_seconds:
        _check_finite(jax.device_get(metrics), epoch, config)  # a sync every few seconds
        done = (start + num_steps) / real_batches
        rate = done * batches.num_examples / (time.time() - t0)
        eta = (time.time() - t0) * (1 - done) / done
        print(f'  epoch {epoch}: {100 * done:4.1f}%  {rate / 1e6:.2f}M samples/s  ETA {eta:.0f}s',
              flush=True)
        last_log = time.time()
    totals = jax.device_get(totals)
    _check_finite(totals, epoch, config)
    train_seconds = time.time() - t0
    t1 = time.time()
    record = dict(epoch=epoch, step=int(state['step']), top_k=config.top_k,
                  loss=float(totals['loss_sum'] / max(totals['weight_sum'], 1.0)),
                  **evaluators(state['params']))
    record.update(eval_seconds=time.time() - t1, train_seconds=train_seconds,
                  samples_per_second=batches.num_examples / train_seconds,
                  elapsed_seconds=time.time() - start_time)
    history.append(log.append(record))
    print(_format_metrics(record), flush=True)
    best_so_far = max(evaluators.selection_metric(r) for r in history[:-1])
    ckpts.save(epoch, state, is_best=evaluators.selection_metric(record) > best_so_far)
