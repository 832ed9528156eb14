"""`train_and_evaluate(config, workdir)`: a training run in a few named steps, callable from a
notebook.

  build         the dataset, model, optimizer and evaluators of the run's settings
                (`run_settings.read(config)`: the one reading of the config)
  start         a fresh state evaluated at epoch 0, or the state of the last intact checkpoint
  train_epoch   one epoch of compiled chunks of steps; one host sync at its end
  evaluate      test (and validation, full ranking) metrics of the params
  record_epoch  the console line and the checkpoint; metrics.jsonl once it is durable
  train_epochs  the loop over epochs, which ends early at `target_hr` (MLPerf's stopping rule)
"""

import contextlib
import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncf_jax import als_fit
from ncf_jax import batch_source as batch_source_lib
from ncf_jax import config_fields
from ncf_jax import epoch as epoch_lib
from ncf_jax import evaluation
from ncf_jax import kept_programs
from ncf_jax import interrupts
from ncf_jax import models
from ncf_jax import optimizers
from ncf_jax import pretrain
from ncf_jax import provenance
from ncf_jax import row_sharded
from ncf_jax import run_dir as run_dir_lib
from ncf_jax import run_settings
from ncf_jax import sharding
from ncf_jax import summaries as summaries_lib
from ncf_jax import tables
from ncf_jax import train_step as train_step_lib
from ncf_jax.data import registry
from ncf_jax.data.dataset import Dataset
from ncf_jax.errors import CheckpointError, DamagedCheckpointError, NonFiniteError
from ncf_jax.run_settings import TrainingSettings


class Evaluators:
  """The evaluations after each epoch: test; validation and full ranking if configured."""

  def __init__(self, dataset: Dataset, model, layout: sharding.Layout, top_k: int,
               blocks: int, full_ranking: bool):
    self.top_k = top_k
    self.test = evaluation.SampledEvaluator(model, dataset.test, blocks, layout=layout,
                                            num_items=dataset.num_items)
    self.valid = (evaluation.SampledEvaluator(model, dataset.valid, blocks, what='validation',
                                              layout=layout, num_items=dataset.num_items)
                  if dataset.valid is not None else None)
    self.full = (evaluation.full_ranking_evaluator(model, dataset, layout)
                 if full_ranking else None)
    for evaluator in (self.test, self.valid, self.full):
      if evaluator is not None:  # before anything trains or is written
        evaluation.check_top_k(self.top_k, evaluator.num_candidates, evaluator.what)

  def __call__(self, params) -> dict:
    test = self.test(params, self.top_k)
    out = dict(hr=test['hr'], ndcg=test['ndcg'], corrected_hr=test['corrected_hr'], test=test)
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
  run: run_settings.RunSettings  # what the config says, read once (`run_settings.read`)
  dataset: Dataset
  model: models.ScoringModel
  optimizer: optimizers.Optimizer
  evaluators: Evaluators
  total_steps: int  # the whole run's optimizer steps (the end of a decaying schedule)
  layout: sharding.Layout
  settings: TrainingSettings
  regularization: train_step_lib.Regularization
  epoch_spec: epoch_lib.EpochSpec
  epoch_arrays: dict  # the epoch definition's positives and membership structure (NumPy)
  _abstract_state: object = dataclasses.field(default=None, init=False, repr=False)

  @property
  def batches_per_epoch(self) -> int:
    return epoch_lib.num_batches_per_epoch(self.epoch_spec.num_positives,
                                           self.epoch_spec.num_negatives,
                                           self.settings.batch_size)

  def batch_source(self, last_epoch: int | None = None) -> batch_source_lib.BatchSource:
    """A new source of this run's batches (close it after use)."""
    s = self.settings
    return batch_source_lib.create(s.sampler, self.epoch_spec, self.epoch_arrays, s.seed,
                                   s.batch_size, s.steps_per_dispatch, self.layout, last_epoch)

  def abstract_state(self):
    """Shapes, dtypes and shardings of the train state (nothing allocated; traced once per
    experiment, as its model and optimizer never change)."""
    if self._abstract_state is None:
      abstract = train_step_lib.abstract_state(self.model, self.optimizer)
      shardings = self.layout.state_shardings(abstract, self.model.table_specs())
      self._abstract_state = jax.tree_util.tree_map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return self._abstract_state


def build(run: run_settings.RunSettings) -> Experiment:
  """The dataset, model, optimizer, evaluators and device layout of a run's settings."""
  layout = sharding.create_layout(run.devices.num_devices, run.training.batch_size,
                                  run.devices.embedding_sharding)
  dataset = registry.load_dataset(run.data)
  model = models.create_model(run.model, dataset.num_users, dataset.num_items,
                              layout.num_devices)
  settings = run.training
  spec, arrays = epoch_definition(dataset, run.epoch.num_negatives, run.epoch.reject_positives,
                                  run.epoch.exclude_heldout)
  total_steps = settings.num_epochs * epoch_lib.num_batches_per_epoch(
      dataset.num_train, spec.num_negatives, settings.batch_size)
  evaluators = Evaluators(dataset, model, layout, run.evaluation.top_k,
                          run.evaluation.users_per_block, run.evaluation.full_ranking)
  return Experiment(run, dataset, model, optimizers.create_optimizer(run.optimizer, total_steps),
                    evaluators, total_steps, layout, settings, run.regularization, spec, arrays)


def epoch_definition(dataset: Dataset, num_negatives: int, reject_positives: bool,
                     exclude_heldout: bool) -> tuple[epoch_lib.EpochSpec, dict]:
  """The epoch definition's numbers and arrays for `dataset`: negatives avoid the training
  pairs (and the held-out ones with `exclude_heldout`), or nothing without `reject_positives`."""
  known_users, known_items = dataset.train_users, dataset.train_items
  if exclude_heldout:
    held = [h for h in (dataset.test, dataset.valid) if h is not None]
    known_users = np.concatenate([known_users] + [h.users for h in held])
    known_items = np.concatenate([known_items] + [h.items for h in held])
  return epoch_lib.build_arrays(dataset.train_users, dataset.train_items, known_users,
                                known_items, dataset.num_users, dataset.num_items,
                                num_negatives, reject_positives)


def initial_state(experiment: Experiment):
  """A fresh train state drawn from the run's seed, laid out on the run's devices.

  Compiled programs draw it, kept for later runs: on one device the parameters (a program
  per model, whatever the optimizer), equal bit for bit to Flax's eager `model.init` on CPU
  (tests/test_train.py), so published numbers re-run exactly; on several the whole state,
  its outputs carrying the state's shardings (no eager copy is placed first; each device
  draws its own rows of a row-sharded table, `row_init`). Embedding tables are equal on every
  mesh; the dense layers' draws may differ in the last bit of a few values.
  """
  model, optimizer = experiment.model, experiment.optimizer
  key_data = jax.random.key_data(jax.random.key(experiment.settings.seed))
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, experiment.abstract_state())
  sources = experiment.run.pretrain
  if sources is not None:
    params = pretrain.merged_params(sources, experiment.run.data,
                                    models.abstract_params(model), model.table_specs())
    provenance.check_sources(sources, experiment.dataset)
  elif experiment.layout.num_devices == 1:
    # Traced as `abstract_state` traced it (no mesh set), so its trace is reused.
    params = _compiled(models.fresh_params(model), shardings['params'])(key_data)
  else:
    with jax.set_mesh(experiment.layout.mesh):  # each device draws its rows (`row_init`)
      return _compiled(train_step_lib.fresh_state(model, optimizer), shardings)(key_data)
  return jax.device_put(train_step_lib.init_state(params, optimizer, model), shardings)


def _compiled(fresh, shardings):
  """`jax.jit(fresh)` with outputs of `shardings`, kept for an equal function and shardings."""
  leaves, tree = jax.tree_util.tree_flatten(shardings)
  return kept_programs.build(_compiled_program, fresh, tuple(leaves), tree)


@kept_programs.kept(maxsize=8)
def _compiled_program(fresh, sharding_leaves, sharding_tree):
  return jax.jit(fresh, out_shardings=jax.tree_util.tree_unflatten(sharding_tree,
                                                                    sharding_leaves))


def format_duration(seconds: float) -> str:
  """`42s`, `3m05s`, `2h07m`."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


def run_seconds_left(history: list[dict], num_epochs: int) -> float | None:
  """The rest of the run at the time (training and evaluation) of its latest trained epoch,
  which, after the first, includes no compilation; None before the first. An upper bound
  when a target_hr stops the run early."""
  if not history or not history[-1].get('train_seconds'):
    return None
  last = history[-1]
  seconds = last['train_seconds'] + (last.get('eval_seconds') or 0.0)
  return seconds * max(0, num_epochs - last['epoch'])


def format_record(record: dict, num_epochs: int = 0, seconds_left: float | None = None) -> str:
  """The console line of one evaluation: `epoch k/N ...`, and the run's time left."""
  parts = [f"epoch {record['epoch']}/{num_epochs}" if num_epochs
           else f"epoch {record['epoch']:3d}"]
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
  if seconds_left:
    parts.append(f'run ETA {format_duration(seconds_left)}')
  return '  '.join(parts)


@dataclasses.dataclass
class RunRecorder:
  """Records a run as it trains: the run folder being written, its checkpoints, and the
  run's clock and records so far. In a run of
  several processes only process 0 (`primary`) writes files other than checkpoints, holds
  the lock and prints; every process keeps the same history and takes part in checkpoints.

  Two-phase epochs: `record_epoch` starts the checkpoint save of an epoch and keeps its
  record `pending`; the next `commit` (before the next epoch's save, or at the end) waits
  until the checkpoint is durable, then appends the record, then drops the checkpoints
  no longer kept. So the save overlaps the next epoch's training, and metrics.jsonl never
  names an epoch without its checkpoint."""
  run: run_dir_lib.RunDir
  latest: object  # checkpoints.CheckpointDir
  start_time: float
  history: list
  target_hr: float = 0.0  # 0: no target
  primary: bool = True
  identity: str = ''  # run_dir.run_identity of the run: every checkpoint carries it
  pending: dict | None = None  # the record of the epoch whose save is under way
  summaries: summaries_lib.RunSummaries | None = None  # TensorBoard (process 0)
  num_epochs: int = 0  # for `epoch k/N` (0: unknown)

  def say(self, line: str) -> None:
    if self.primary:
      print(line, flush=True)

  def commit(self) -> None:
    """The pending epoch: checkpoint durable, record appended, old checkpoints dropped (the
    last KEEP_LATEST and the best are kept). CheckpointSaveError if the save failed."""
    record, self.pending = self.pending, None
    if record is None:
      return
    self.latest.finish_save()
    if self.primary:
      self.run.append_metrics(record)
    self.history.append(record)
    if self.summaries is not None:
      self.summaries.write(record)
    durable = self.latest.epochs()
    keep = set(durable[-run_dir_lib.KEEP_LATEST:])
    keep.add(run_dir_lib.best_record(self.history)['epoch'])
    for epoch in durable:
      if epoch not in keep:
        self.latest.delete(epoch)

  def close(self) -> None:
    """Commits a pending epoch (its save may have finished while a later epoch failed or
    was interrupted), then closes the checkpoints."""
    try:
      self.commit()
    finally:
      self.latest.close()


def evaluate(experiment: Experiment, state, epoch: int, loss: float | None) -> dict:
  """The metrics record of `state` after `epoch` (whose training loss was `loss`)."""
  t0 = time.time()
  record = dict(epoch=epoch, step=int(state['step']), top_k=experiment.settings.top_k, loss=loss,
                **experiment.evaluators(state['params']))
  record['eval_seconds'] = time.time() - t0
  interrupts.check()  # before anything of this evaluation is recorded
  return record


def mark_target(recorder: RunRecorder, record: dict) -> None:
  """Marks `record` if it is the first to reach the target: `reached_target`, the target,
  and `seconds_to_target` (from process start, like `elapsed_seconds`)."""
  target = recorder.target_hr
  if target and run_dir_lib.target_record([*recorder.history, record], target) is record:
    record.update(reached_target=True, target_hr=target,
                  seconds_to_target=record['elapsed_seconds'])


def record_epoch(recorder: RunRecorder, record: dict, state) -> None:
  """Commits the previous epoch, prints `record` and starts saving `state` with it; the
  record is appended to metrics.jsonl once the checkpoint is durable (`RunRecorder.commit`)."""
  record['elapsed_seconds'] = time.time() - recorder.start_time
  recorder.commit()
  mark_target(recorder, record)
  record = run_dir_lib.json_safe(record)
  recorder.say(format_record(record, recorder.num_epochs,
                            run_seconds_left([*recorder.history, record], recorder.num_epochs)))
  recorder.latest.save(record['epoch'], state, dict(
      epoch=record['epoch'], step=record['step'], run_identity=recorder.identity, record=record))
  recorder.pending = record


def _restore_latest(recorder: RunRecorder, abstract_state,
                    tables=()) -> tuple[object, int, dict] | None:
  """(state, epoch, meta) of the newest intact checkpoint the records reach (its epoch at
  most one past the last record); None when there is none.

  A damaged newest checkpoint (unreadable, contents differing from its digests, or not the
  epoch or run its folder says) is passed over for the one before it, with a note.
  """
  recorded = [r['epoch'] for r in recorder.history]
  epochs = recorder.latest.epochs()
  reachable = [e for e in epochs if e <= (recorded[-1] if recorded else -1) + 1]
  for epoch in sorted(set(epochs) - set(reachable)):
    recorder.say(f'note: {recorder.latest.where(epoch)}: passed over: '
                 f'{recorder.run.file(run_dir_lib.METRICS)} has no record of epoch {epoch - 1}')
  for i, epoch in enumerate(reversed(reachable)):
    try:
      state, meta = recorder.latest.restore(epoch, abstract_state, identity=recorder.identity,
                                            tables=tables)  # re-padded from another mesh
      return state, epoch, meta
    except DamagedCheckpointError as e:
      if i == len(reachable) - 1:
        raise
      recorder.say(f'note: {e}; resuming from the checkpoint before it')
  return None


def _reconcile_records(recorder: RunRecorder, epoch: int, meta: dict) -> None:
  """Makes the records end at `epoch`, the checkpoint resumed from: a record lost between
  its durable checkpoint and the append (a crash, a torn last line) is restored from the
  checkpoint; records of later epochs (whose checkpoints are gone) are removed."""
  run, metrics = recorder.run, recorder.run.file(run_dir_lib.METRICS)
  recorded = [r['epoch'] for r in recorder.history]
  if epoch not in recorded:
    record = meta.get('record')
    if record is None or record.get('epoch') != epoch:
      raise CheckpointError(f'{metrics}: no record of epoch {epoch}, and its checkpoint '
                            f'{recorder.latest.where(epoch)} holds none')
    if recorder.primary:
      run.append_metrics(record)
    recorder.history.append(record)
    recorder.say(f'note: {metrics}: the record of epoch {epoch} was missing (the run stopped '
                 'after its checkpoint was saved); restored from the checkpoint')
  removed = [e for e in recorded if e > epoch]
  if removed:
    if recorder.primary:
      run.remove_metrics_after(epoch)
    recorder.history[:] = [r for r in recorder.history if r['epoch'] <= epoch]
    recorder.say(f'note: {metrics}: records of epoch(s) {", ".join(map(str, removed))} removed: '
                 'their checkpoints are missing or damaged, so they are trained again')


def _check_best_checkpoint(recorder: RunRecorder) -> None:
  """CheckpointError when the best recorded epoch's checkpoint is gone: the run's product
  cannot be recreated by resuming."""
  best = run_dir_lib.best_record(recorder.history)['epoch']
  legacy = os.path.join(recorder.run.file(run_dir_lib.CHECKPOINTS), run_dir_lib.LEGACY_BEST,
                        str(best))
  if best not in recorder.latest.epochs() and not os.path.isdir(legacy):
    raise CheckpointError(
        f'{recorder.latest.where(best)}: missing: the checkpoint of the best epoch ({best}, by '
        f'{recorder.run.file(run_dir_lib.METRICS)}); put it back, or start over with --restart')


def start(experiment: Experiment, recorder: RunRecorder) -> tuple[object, int]:
  """(state, last finished epoch): resumed from the latest intact checkpoint, or fresh
  (then evaluated and saved as epoch 0)."""
  settings, run = experiment.run, recorder.run
  trained_on = provenance.describe(settings.computing_fields, experiment.dataset)
  changed = provenance.check_same_run(run, settings.computing_fields, trained_on['data_dir'],
                                      trained_on['data_fingerprint'])  # never mix two runs
  note = run.repair_metrics() if recorder.primary else None
  if note:
    recorder.say(note)
  recorder.history[:] = run.read_metrics()
  saved_config = os.path.isfile(run.file(run_dir_lib.CONFIG))
  recorder.identity = run_dir_lib.run_identity(
      config_fields.computing_fields(run.read_config_json()) if saved_config
      else settings.computing_fields)
  resumed = _restore_latest(recorder, experiment.abstract_state(), experiment.model.table_specs())
  if resumed is not None:
    state, epoch, meta = resumed
    _reconcile_records(recorder, epoch, meta)
    _check_best_checkpoint(recorder)
    recorder.say(f'resuming after epoch {epoch} from {recorder.latest.directory}')
    if changed:
      recorder.say(f'note: config differs from the run being resumed in: {", ".join(changed)}')
  else:
    metrics = run.file(run_dir_lib.METRICS)
    if recorder.history:
      epochs = [r['epoch'] for r in recorder.history]
      raise CheckpointError(
          f'{recorder.latest.directory}: no checkpoint, but {metrics} records epochs '
          f'{epochs[0]}..{epochs[-1]}; put the checkpoints back, or start over with --restart')
    if recorder.latest.epochs():
      raise CheckpointError(
          f'{metrics}: no records, but {recorder.latest.directory} holds epochs '
          f'{", ".join(map(str, recorder.latest.epochs()))}; put metrics.jsonl back, or start '
          'over with --restart')
    state, epoch = initial_state(experiment), 0
  if recorder.primary:
    run.write_config(settings.config_json)
    provenance.record(run, trained_on)
  if resumed is None:
    recorder.identity = run_dir_lib.run_identity(settings.computing_fields)
    record = evaluate(experiment, state, 0, loss=None)
    record_epoch(recorder, dict(record, train_seconds=None, samples_per_second=None,
                                devices=experiment.layout.num_devices,
                                processes=jax.process_count()), state)
  return state, epoch


# A run has diverged when its mean training log loss passes this, 100 x the loss of a model
# that scores every pair 0.5 (log 2 = 0.693, what the untrained model scores at the project's
# initialisations). Each example's log loss is at most |logit| + log 2, so a mean of 69.3
# needs the true label put at odds below e^-68 on average: no model that learns is there.
# Published runs' epochs stay below log 2 (0.2-0.6); a finite blow-up (Adam at
# learning_rate=1e6: ~1e33) is far above.
DIVERGED_LOSS = 100 * math.log(2)


def _check_finite(metrics: dict, epoch: int, learning_rate: float) -> None:
  """NonFiniteError if a chunk's loss or parameters went NaN or infinite, or the mean loss is
  far above the untrained model's (`DIVERGED_LOSS`)."""
  loss = float(metrics['loss_sum']) / max(float(metrics['weight_sum']), 1.0)
  if metrics['nonfinite']:
    what = 'the loss or parameters became NaN or infinite'
  elif loss > DIVERGED_LOSS:
    what = (f'mean training loss {loss:.3g}, above {DIVERGED_LOSS:.1f} = 100 x the untrained '
            'model\'s log 2')
  else:
    return
  raise NonFiniteError(
      f'epoch {epoch}: training diverged ({what}); '
      f'nothing of epoch {epoch} was saved. The likely cause is the learning rate '
      f'(config.learning_rate={learning_rate:g}): run the same command with a smaller '
      f'one to resume after epoch {epoch - 1}')


def train_epoch(experiment: Experiment, train_chunk, state, epoch: int,
                source: batch_source_lib.BatchSource) -> tuple[object, float, dict]:
  """One epoch, `steps_per_dispatch` steps per call: (state, mean loss, timings).

  The host waits for the device once, at the end (and every `log_every_seconds`
  for a progress line); the non-finite check rides on those syncs.
  """
  settings = experiment.settings
  num_batches, done_steps = source.num_steps, 0
  t0 = last_log = time.time()
  waited = source.wait_seconds
  totals = None
  for inputs, num_steps in source.chunks(epoch):
    interrupts.check()  # SIGTERM / Ctrl-C stop here, between compiled chunks
    state, metrics = train_chunk(state, inputs, np.int32(num_steps))
    done_steps += num_steps
    totals = metrics if totals is None else jax.tree_util.tree_map(jnp.add, totals, metrics)
    if settings.log_every_seconds and time.time() - last_log > settings.log_every_seconds:
      _check_finite(jax.device_get(metrics), epoch, settings.learning_rate)
      done = done_steps / num_batches
      elapsed = time.time() - t0
      if jax.process_index() == 0:
        epoch_left = elapsed * (1 - done) / done
        run_left = epoch_left + (settings.num_epochs - epoch) * elapsed / done
        print(f'  epoch {epoch}/{settings.num_epochs}: {100 * done:4.1f}%  '
              f'{done * source.num_examples / elapsed / 1e6:.2f}M samples/s  '
              f'ETA epoch {format_duration(epoch_left)}, run {format_duration(run_left)}',
              flush=True)
      last_log = time.time()
  totals = jax.device_get(totals)
  _check_finite(totals, epoch, settings.learning_rate)
  seconds = time.time() - t0
  loss = float(totals['loss_sum'] / max(totals['weight_sum'], 1.0))
  return state, loss, dict(train_seconds=seconds,
                           samples_per_second=source.num_examples / seconds,
                           input_wait_seconds=source.wait_seconds - waited,
                           devices=experiment.layout.num_devices, processes=jax.process_count())


def _train_chunk(experiment: Experiment, source: batch_source_lib.BatchSource):
  """The jitted chunk of `experiment`'s steps fed by `source`. Fed by host batches (one
  `select` for all), kept for the next run in this process of an equal model, optimizer,
  regularization and layout (`kept_programs`): nothing is traced again."""
  make_chunk = (row_sharded.make_train_chunk
                if row_sharded.has_row_sharded(experiment.model.table_specs())
                else train_step_lib.make_train_chunk)
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, experiment.abstract_state())
  args = (experiment.model, experiment.optimizer, experiment.regularization, experiment.layout)
  if source.select is not batch_source_lib.take_step:
    return make_chunk(*args, shardings, select_batch=source.select,
                      inputs_sharding=source.inputs_sharding())
  state_leaves, state_tree = jax.tree_util.tree_flatten(shardings)
  input_leaves, input_tree = jax.tree_util.tree_flatten(source.inputs_sharding())
  return kept_programs.build(_host_fed_chunk, make_chunk, *args, tuple(state_leaves),
                             state_tree, tuple(input_leaves), input_tree)


@kept_programs.kept(maxsize=8)
def _host_fed_chunk(make_chunk, model, optimizer, regularization, layout, state_leaves,
                    state_tree, input_leaves, input_tree):
  unflatten = jax.tree_util.tree_unflatten
  return make_chunk(model, optimizer, regularization, layout, unflatten(state_tree, state_leaves),
                    select_batch=batch_source_lib.take_step,
                    inputs_sharding=unflatten(input_tree, input_leaves))


def train_epochs(experiment: Experiment, recorder: RunRecorder, state, done_epoch: int):
  """Trains, evaluates and records epochs after `done_epoch` up to `num_epochs`; stops
  after the epoch reaching the target, or at once if an earlier one did. Returns the state."""
  if run_dir_lib.target_record(recorder.history, recorder.target_hr):
    return state  # the run is finished: resuming it trains nothing
  if experiment.run.model.name in als_fit.FITTED_MODELS:  # fit by least squares, not by SGD
    return als_fit.train_epochs(experiment, recorder, state, done_epoch, evaluate, record_epoch)
  num_epochs = experiment.settings.num_epochs
  source = experiment.batch_source(last_epoch=num_epochs)
  source.start(done_epoch + 1)  # the first batches are made while the step compiles
  try:
    train_chunk = _train_chunk(experiment, source)
    for epoch in range(done_epoch + 1, num_epochs + 1):
      state, loss, timings = train_epoch(experiment, train_chunk, state, epoch, source)
      record = dict(evaluate(experiment, state, epoch, loss), **timings)
      record_epoch(recorder, record, state)
      if record.get('reached_target'):
        break
  finally:
    source.close()
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
  settings = run_settings.read(config)  # the one reading of the config; plain values below
  run = run_dir_lib.RunDir(workdir)
  primary = jax.process_index() == 0
  with run.writer() if primary else contextlib.nullcontext():  # one writer: process 0
    experiment = build(settings)
    dataset, layout = experiment.dataset, experiment.layout
    recorder = RunRecorder(run, run.checkpoints('latest', create=True), start_time, [],
                           settings.training.target_hr, primary,
                           summaries=(summaries_lib.RunSummaries(run.path, settings.config_json)
                                      if primary else None),
                           num_epochs=settings.training.num_epochs)
    recorder.say(f'{dataset.name}: {dataset.num_users} users, {dataset.num_items} items, '
                 f'{dataset.num_train} training positives; model {settings.model.name} on '
                 f'{layout.num_devices} device(s), {jax.process_count()} process(es); '
                 f'workdir {run.path}')
    recorder.say(f'embedding_sharding={settings.devices.embedding_sharding}: '
                 + tables.describe(experiment.model.table_specs(), layout.num_devices))
    try:
      state, done_epoch = start(experiment, recorder)
      state = train_epochs(experiment, recorder, state, done_epoch)
    finally:
      recorder.close()  # a pending save is finished (and recorded), not left half-written
      if recorder.summaries is not None:
        recorder.summaries.close()
  history = recorder.history
  best = run_dir_lib.best_record(history)
  selection = 'validation' if run_dir_lib.selection_key(history) == 'valid_hr' else 'test'
  top_k = settings.training.top_k
  recorder.say(f"best epoch {best['epoch']} (selected on {selection}): "
               f"test HR@{top_k} {best['hr']:.4f} NDCG@{top_k} {best['ndcg']:.4f}")
  if recorder.target_hr:
    recorder.say(target_line(history, recorder.target_hr, top_k))
  return state, history
