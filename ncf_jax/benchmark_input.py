"""The benchmark's input sections: how fast each executor makes an epoch's examples, and
whether the host feeder keeps the device busy.

  python -m ncf_jax.benchmark --sections=input --shape=ml-20m --out=F.json
  python -m ncf_jax.benchmark --sections=input_overlap --shape=ml-20m --out=F.json

`input`: examples/s of the host executor on one thread and on all of them, of the device
executor (the default backend), examples per CPU-second of one host thread and of the device
executor (figures a busy machine distorts less than wall time), their ratios, and the bytes
the host keeps. `input_overlap`:
one epoch of NeuMF-8 at batch 65,536 through the real loop with `sampler=host`, against
making the epoch's batches alone and training on ready batches alone.
"""

import os
import time

import numpy as np

SHAPES = dict(  # users, items, interactions per user (synthetic.generate's mean activity)
    **{'ml-1m': (6_040, 3_706, 165), 'ml-20m': (138_493, 26_744, 170)})


def shaped_dataset(shape: str, scale: float = 1.0):
  from ncf_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  users, items, per_user = SHAPES[shape]
  return synthetic.generate(num_users=max(100, int(users * scale)), num_items=items,
                            interactions_per_user=per_user, num_clusters=32, seed=0,
                            name=f'synthetic-{shape}')


def _host_rate(spec, arrays, batch_size: int, steps: int, threads: int, min_examples: int):
  """(examples/s wall, CPU s per example, in-flight bytes) of HostBatches' chunks."""
  from ncf_jax import batch_source, sharding  # pylint: disable=g-import-not-at-top
  source = batch_source.HostBatches(spec, arrays, 0, batch_size, steps,
                                    sharding.single_device_layout(), threads=threads)
  try:
    chunks = source.local_chunks(1)
    next(chunks)  # warm-up: the pool starts, the first chunks are submitted
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    for local, num_steps in chunks:
      done += int(local['weights'].sum())
      if done >= min_examples:
        break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    inflight = source.chunks_ahead * steps * batch_size * 16
  finally:
    source.close()
  return done / wall, cpu / done, inflight


def _device_rate(spec, arrays, batch_size: int, steps: int, repeats: int):
  """(examples/s wall, CPU s per example) of the device executor: `steps` batches per
  compiled call, reduced to a checksum so nothing is optimised away. The CPU time counts
  every thread of the process (XLA's CPU backend may use several)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ncf_jax import batch_source, sharding  # pylint: disable=g-import-not-at-top
  source = batch_source.DeviceBatches(spec, arrays, 0, batch_size, steps,
                                      sharding.single_device_layout())

  @jax.jit
  def run(inputs):
    def body(i, total):
      batch = source.select(inputs, i)
      return total + jnp.sum(batch['items']) + jnp.sum(batch['users'])
    return jax.lax.fori_loop(0, steps, body, jnp.zeros((), jnp.int32))

  inputs, _ = next(source.chunks(1))
  jax.block_until_ready(run(inputs))
  times, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(run(inputs))
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return (steps * batch_size / float(np.median(times)),
          float(np.median(cpu)) / (steps * batch_size))


def bench_input(dataset, repeats: int, batch_size: int = 65536) -> dict:
  from ncf_jax import epoch as epoch_lib  # pylint: disable=g-import-not-at-top
  from ncf_jax import train  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  spec, arrays = train.epoch_definition(dataset, 4, True, False)
  build_s = time.perf_counter() - t0
  threads = max(1, min(8, os.cpu_count() or 1))
  steps = 8
  target = min(spec.num_examples, 8 * steps * batch_size)
  one, cpu_per_example, _ = _host_rate(spec, arrays, batch_size, steps, 1, target)
  many, _, inflight = _host_rate(spec, arrays, batch_size, steps, threads, target)
  device, device_cpu_per_example = _device_rate(spec, arrays, batch_size, 4, repeats)
  state = epoch_lib.state_bytes(arrays)
  planned = {name: epoch_lib.planned_state_bytes(u, i, p) for name, (u, i, p) in dict(
      **{'ml-1m': (6_040, 3_706, 994_169), 'ml-20m': (138_493, 26_744, 19_861_770),
         '100Mx10M': (100_000_000, 10_000_000, 1_000_000_000)}).items()}
  return dict(num_users=dataset.num_users, num_items=dataset.num_items,
              num_positives=spec.num_positives, examples_per_epoch=spec.num_examples,
              batch_size=batch_size, definition_build_s=build_s,
              host_examples_per_s_one_thread=one, host_examples_per_s=many,
              host_threads=threads, host_speedup=many / one,
              host_examples_per_cpu_s_one_thread=1 / cpu_per_example,
              device_examples_per_s=device, device_examples_per_cpu_s=1 / device_cpu_per_example,
              device_over_host_one_thread=device / one,
              device_over_host_one_thread_cpu=cpu_per_example / device_cpu_per_example,
              membership='bitmap' if spec.use_bitmap else 'csr',
              host_state_bytes=state, host_inflight_bytes=inflight,
              host_bytes_per_example=(state + inflight) / spec.num_examples,
              planned_state_bytes=planned)


def bench_input_overlap(dataset, batch_size: int = 65536, steps: int = 4) -> dict:
  """One NeuMF-8 epoch with the host feeder: epoch, generation alone, training alone, and
  how long the loop waited for input."""
  import jax  # pylint: disable=g-import-not-at-top
  from ncf_jax import models, optimizers, train, train_step  # pylint: disable=g-import-not-at-top
  from ncf_jax import run_settings  # pylint: disable=g-import-not-at-top
  from ncf_jax import batch_source, sharding  # pylint: disable=g-import-not-at-top
  from ncf_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.batch_size, config.steps_per_dispatch = batch_size, steps
  spec, arrays = train.epoch_definition(dataset, 4, True, False)
  layout = sharding.single_device_layout()
  model = models.create_model(run_settings.model_settings(config), dataset.num_users,
                              dataset.num_items)
  optimizer = optimizers.create_optimizer(run_settings.optimizer_settings(config))
  shardings = layout.state_shardings(train_step.abstract_state(model, optimizer),
                                     model.table_specs())
  fresh = lambda: jax.jit(lambda: train_step.init_state(models.init_params(model, 0), optimizer,
                                                        model), out_shardings=shardings)()

  def host_source():
    return batch_source.HostBatches(spec, arrays, 0, batch_size, steps, layout)

  source = host_source()
  chunk_fn = train_step.make_train_chunk(model, optimizer, train_step.Regularization(), layout,
                                         shardings, source.select, source.inputs_sharding())
  try:
    # Generation alone: every chunk of the epoch, handed over to the device, no training.
    t0 = time.perf_counter()
    ready = []
    for inputs, num_steps in source.chunks(1):
      if len(ready) < 2:
        ready.append((inputs, num_steps))
    jax.block_until_ready(ready)
    generation = time.perf_counter() - t0
  finally:
    source.close()
  # Training alone: as many steps on batches already on the device (compiled first).
  state = fresh()
  state, _ = chunk_fn(state, ready[0][0], np.int32(ready[0][1]))
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for c in range(-(-source.num_steps // steps)):
    inputs, _ = ready[c % len(ready)]
    state, metrics = chunk_fn(state, inputs, np.int32(source.steps_in(c)))
  jax.block_until_ready(metrics)
  training = time.perf_counter() - t0
  # The real thing: the loop's own train_epoch with the host source.
  source = host_source()
  try:
    experiment = _Experiment(train.TrainingSettings(0, 1, batch_size, steps, 'host', 0.001, 0.0,
                                                    10, 0.0), layout)
    state = fresh()
    t0 = time.perf_counter()
    state, _, timings = train.train_epoch(experiment, chunk_fn, state, 1, source)
    epoch_seconds = time.perf_counter() - t0
  finally:
    source.close()
  return dict(examples=spec.num_examples, batch_size=batch_size, steps_per_dispatch=steps,
              epoch_seconds=epoch_seconds, generation_seconds=generation,
              training_seconds=training, device_wait_seconds=timings['input_wait_seconds'],
              wait_fraction=timings['input_wait_seconds'] / epoch_seconds,
              host_threads=source.threads)


class _Experiment:
  """What `train.train_epoch` reads of an experiment."""

  def __init__(self, settings, layout):
    self.settings, self.layout = settings, layout
