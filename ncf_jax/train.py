"""`train_and_evaluate(config, workdir)`: a training run in a few named steps, callable from a
notebook.

  build         the dataset, model, optimizer and evaluators a config names
  start         a fresh state evaluated at epoch 0, or the state of the last intact checkpoint
  train_epoch   one epoch of compiled chunks of steps; one host sync at its end
  evaluate      test (and validation, full ranking) metrics of the params
  record_epoch  metrics.jsonl, the console line, the latest and best checkpoints
  train_epochs  the loop over epochs, which ends early at `target_hr` (MLPerf's stopping rule)
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncf_jax import config_checks
from ncf_jax import evaluation
from ncf_jax import feeder
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import run_dir as run_dir_lib
from ncf_jax import train_step as train_step_lib
from ncf_jax.data import registry
from ncf_jax.data.dataset import Dataset
from ncf_jax.errors import DamagedCheckpointError, NonFiniteError


class Evaluators:
  """The evaluations after each epoch: test; validation and full ranking if configured."""

  def __init__(self, config: ml_collections.ConfigDict, dataset: Dataset, model):
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


@dataclasses.dataclass
class Experiment:
  """What a run needs that does not change while it trains."""
  config: ml_collections.ConfigDict
  dataset: Dataset
  model: models.ScoringModel
  optimizer: optimizers.Optimizer
  evaluators: Evaluators
  total_steps: int  # the whole run's optimizer steps (the end of a decaying schedule)

  @property
  def batches_per_epoch(self) -> int:
    return feeder.num_batches_per_epoch(self.dataset.num_train, self.config.num_negatives,
                                        self.config.batch_size)


def build(config: ml_collections.ConfigDict) -> Experiment:
  """The dataset, model, optimizer and evaluators `config` names (a validated config)."""
  dataset = registry.load_dataset(config)
  model = models.create_model(config, dataset.num_users, dataset.num_items)
  total_steps = config.num_epochs * feeder.num_batches_per_epoch(
      dataset.num_train, config.num_negatives, config.batch_size)
  return Experiment(config, dataset, model, optimizers.create_optimizer(config, total_steps),
                    Evaluators(config, dataset, model), total_steps)


def _initial_params(experiment: Experiment) -> dict:
  config, model = experiment.config, experiment.model
  ids = jnp.zeros((1,), jnp.int32)
  params = model.init(jax.random.key(config.seed), ids, ids)['params']
  # A config with the pretraining fields (configs/neumf_pretrained.py) must set them:
  # otherwise it would silently fine-tune a fresh NeuMF with its SGD settings.
  if 'gmf_workdir' in config or 'mlp_workdir' in config:
    from ncf_jax import pretrain  # pylint: disable=g-import-not-at-top
    params = pretrain.merged_params(config, jax.eval_shape(lambda: params))
  return params


def format_record(record: dict) -> str:
  """The console line of one evaluation."""
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
    parts.append(f"train {record['train_seconds']:.1f}s "
                 f"({record['samples_per_second'] / 1e6:.2f}M/s)")
  parts.append(f"eval {record['eval_seconds']:.2f}s")
  return '  '.join(parts)


@dataclasses.dataclass
class Progress:
  """The run folder being written, and the run's clock and records so far."""
  run: run_dir_lib.RunDir
  latest: object  # checkpoints.CheckpointDir
  best: object
  start_time: float
  history: list
  target_hr: float = 0.0  # 0: no target


def evaluate(experiment: Experiment, state, epoch: int, loss: float | None) -> dict:
  """The metrics record of `state` after `epoch` (whose training loss was `loss`)."""
  t0 = time.time()
  record = dict(epoch=epoch, step=int(state['step']), top_k=experiment.config.top_k, loss=loss,
                **experiment.evaluators(state['params']))
  record['eval_seconds'] = time.time() - t0
  return record


def mark_target(progress: Progress, record: dict) -> None:
  """Marks `record` if it is the first to reach the target: `reached_target`, the target,
  and `seconds_to_target` (from process start, like `elapsed_seconds`)."""
  target = progress.target_hr
  if target and run_dir_lib.target_record([*progress.history, record], target) is record:
    record.update(reached_target=True, target_hr=target,
                  seconds_to_target=record['elapsed_seconds'])


def record_epoch(progress: Progress, record: dict, state) -> None:
  """Appends `record`, prints it, and checkpoints `state` (as best, if it is)."""
  record['elapsed_seconds'] = time.time() - progress.start_time
  mark_target(progress, record)
  is_best = run_dir_lib.is_improvement(record, progress.history)
  progress.history.append(progress.run.append_metrics(record))
  print(format_record(record), flush=True)
  progress.latest.save(record['epoch'], state)
  if is_best:
    progress.best.save(record['epoch'], state)


def _restore_latest(progress: Progress, abstract_state) -> tuple[object, int] | None:
  """(state, epoch) of the newest intact latest checkpoint; None when there is none.

  A damaged newest checkpoint is passed over for the one before it, with a note.
  """
  epochs = progress.latest.epochs()
  for i, epoch in enumerate(reversed(epochs)):
    try:
      return progress.latest.restore(epoch, abstract_state), epoch
    except DamagedCheckpointError as e:
      if i == len(epochs) - 1:
        raise
      print(f'note: {e}; resuming from the checkpoint before it', flush=True)
  return None


def start(experiment: Experiment, progress: Progress) -> tuple[object, int]:
  """(state, last finished epoch): resumed from the latest intact checkpoint, or fresh
  (then evaluated and saved as epoch 0)."""
  config = experiment.config
  abstract = train_step_lib.abstract_state(experiment.model, experiment.optimizer)
  resumed = _restore_latest(progress, abstract)
  if resumed is not None:
    state, epoch = resumed
    progress.history[:] = progress.run.keep_metrics_through(epoch)
    print(f'resuming after epoch {epoch} from {progress.latest.directory}', flush=True)
    changed = progress.run.changed_fields(config)
    if changed:
      print(f'note: config differs from the run being resumed in: {", ".join(changed)}',
            flush=True)
    progress.run.write_config(config)
    return state, epoch
  progress.history[:] = progress.run.keep_metrics_through(-1)
  progress.run.write_config(config)
  state = train_step_lib.init_state(_initial_params(experiment), experiment.optimizer,
                                    experiment.model)
  record = evaluate(experiment, state, 0, loss=None)
  record_epoch(progress, dict(record, train_seconds=None, samples_per_second=None), state)
  return state, 0


def _check_finite(metrics: dict, epoch: int, config) -> None:
  """NonFiniteError if a chunk's loss or parameters went NaN or infinite."""
  if metrics['nonfinite']:
    raise NonFiniteError(
        f'epoch {epoch}: training diverged (the loss or parameters became NaN or infinite); '
        f'nothing of epoch {epoch} was saved. The likely cause is the learning rate '
        f'(config.learning_rate={config.learning_rate:g}): run the same command with a smaller '
        f'one to resume after epoch {epoch - 1}')


def train_epoch(experiment: Experiment, train_chunk, state, epoch: int,
                batches: feeder.EpochBatches) -> tuple[object, float, dict]:
  """One epoch, `steps_per_dispatch` steps per call: (state, mean loss, timings).

  The host waits for the device once, at the end (and every `log_every_seconds`
  for a progress line); the non-finite check rides on those syncs.
  """
  config = experiment.config
  chunk_size, num_batches = config.steps_per_dispatch, experiment.batches_per_epoch
  t0 = last_log = time.time()
  totals = None
  for start_batch in range(0, num_batches, chunk_size):
    num_steps = min(chunk_size, num_batches - start_batch)
    state, metrics = train_chunk(state, batches.chunk(start_batch, chunk_size),
                                 np.int32(num_steps))
    totals = metrics if totals is None else jax.tree_util.tree_map(jnp.add, totals, metrics)
    if config.log_every_seconds and time.time() - last_log > config.log_every_seconds:
      _check_finite(jax.device_get(metrics), epoch, config)
      done = (start_batch + num_steps) / num_batches
      elapsed = time.time() - t0
      print(f'  epoch {epoch}: {100 * done:4.1f}%  '
            f'{done * batches.num_examples / elapsed / 1e6:.2f}M samples/s  '
            f'ETA {elapsed * (1 - done) / done:.0f}s', flush=True)
      last_log = time.time()
  totals = jax.device_get(totals)
  _check_finite(totals, epoch, config)
  seconds = time.time() - t0
  loss = float(totals['loss_sum'] / max(totals['weight_sum'], 1.0))
  return state, loss, dict(train_seconds=seconds,
                           samples_per_second=batches.num_examples / seconds)


def train_epochs(experiment: Experiment, progress: Progress, state, done_epoch: int):
  """Trains, evaluates and records epochs after `done_epoch` up to `num_epochs`; stops
  after the epoch reaching the target, or at once if an earlier one did. Returns the state."""
  config = experiment.config
  if run_dir_lib.target_record(progress.history, progress.target_hr):
    return state  # the run is finished: resuming it trains nothing
  train_chunk = train_step_lib.make_train_chunk(
      experiment.model, experiment.optimizer, train_step_lib.Regularization.from_config(config))
  for epoch, batches in feeder.iterate_epochs(
      experiment.dataset, config.num_negatives, config.batch_size, config.seed, done_epoch + 1,
      config.num_epochs, config.reject_positives, batch_multiple=config.steps_per_dispatch,
      exclude_heldout=config.get('exclude_heldout_from_negatives', False)):
    state, loss, timings = train_epoch(experiment, train_chunk, state, epoch, batches)
    record = dict(evaluate(experiment, state, epoch, loss), **timings)
    record_epoch(progress, record, state)
    if record.get('reached_target'):
      break
  return state


def target_line(history: list[dict], target_hr: float, top_k: int) -> str:
  """The closing console line of a run with a target: when it was reached, or that it
  was not."""
  key = run_dir_lib.selection_key(history)
  name = ('valid ' if key == 'valid_hr' else '') + f'HR@{top_k}'
  reached = run_dir_lib.target_record(history, target_hr)
  if reached is None:
    best = run_dir_lib.best_record(history)[key]
    return (f'target {name} {target_hr:g} not reached in {history[-1]["epoch"]} epochs '
            f'(best {best:.4f})')
  seconds = reached.get('seconds_to_target', reached['elapsed_seconds'])
  return (f"reached {name} {reached[key]:.4f} >= target {target_hr:g} at epoch "
          f"{reached['epoch']} after {seconds:.1f} s")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains `config.model` on `config.dataset`, evaluating before training and after
  every epoch, checkpointing into `workdir` and resuming from it.

  Returns (final train state, list of metric records).
  """
  start_time = time.time()
  config_checks.validate(config)
  run = run_dir_lib.RunDir(workdir)
  with run.writer():
    experiment = build(config)
    dataset = experiment.dataset
    print(f'{dataset.name}: {dataset.num_users} users, {dataset.num_items} items, '
          f'{dataset.num_train} training positives; model {config.model}, workdir {run.path}',
          flush=True)
    progress = Progress(run, run.checkpoints('latest', create=True),
                        run.checkpoints('best', create=True), start_time, [],
                        config.get('target_hr', 0.0))
    try:
      state, done_epoch = start(experiment, progress)
      state = train_epochs(experiment, progress, state, done_epoch)
    finally:
      progress.latest.close()  # an interrupted save is finished, not left half-written
      progress.best.close()
  history = progress.history
  best = run_dir_lib.best_record(history)
  selection = 'validation' if run_dir_lib.selection_key(history) == 'valid_hr' else 'test'
  print(f"best epoch {best['epoch']} (selected on {selection}): "
        f"test HR@{config.top_k} {best['hr']:.4f} NDCG@{config.top_k} {best['ndcg']:.4f}",
        flush=True)
  if progress.target_hr:
    print(target_line(history, progress.target_hr, config.top_k), flush=True)
  return state, history
