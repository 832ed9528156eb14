"""Where the training loop's batches come from: the two executors of one epoch definition.

The loop asks a `BatchSource` for an epoch's chunks and hands each to the compiled chunk
function, which calls `source.select(inputs, i)` inside the compiled loop to get step i's
batch (a dict of (B,) arrays). The step itself sees arrays only, so a new source (a
streaming file reader, say) implements this interface and nothing else changes.

- `HostBatches` (`config.sampler='host'`): NumPy on a pool of threads. Each process builds
  only its own columns of each global batch (`epoch.host_examples`), ahead of the loop into
  a bounded queue of chunks, across epoch boundaries; `wait_seconds` is how long the loop
  waited for it.
- `DeviceBatches` (`config.sampler='device'`): `epoch.device_examples` inside the compiled
  chunk, sharded like the batch; the positives and the membership structure live on every
  device (replicated); per step the host sends nothing.

Both compute the same integers, so a run's records do not depend on the executor.
"""

import collections
import concurrent.futures
import os
import time
from typing import Iterator, Protocol

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from ncf_jax import epoch as epoch_lib
from ncf_jax import sharding

SAMPLERS = ('host', 'device')
PIECE = 1 << 16  # examples per host work item: a few MB of temporaries, cache-friendly


class BatchSource(Protocol):
  num_examples: int  # real examples per epoch
  num_steps: int  # real (unpadded) batches per epoch: the optimizer steps it takes
  steps_per_chunk: int
  wait_seconds: float  # time the loop waited for input, in total

  def start(self, epoch: int) -> None:
    """Begins making epoch `epoch`'s batches (e.g. while the step compiles)."""

  def chunks(self, epoch: int) -> Iterator[tuple[dict, int]]:
    """(inputs, number of steps) of each compiled call of epoch `epoch`."""

  def select(self, inputs: dict, i) -> dict:
    """Step i's batch {'users', 'items', 'labels', 'weights'} of a chunk's inputs (traced)."""

  def inputs_sharding(self):
    """The sharding pytree of a chunk's inputs."""

  def close(self) -> None:
    """Stops any work in flight."""


def take_step(inputs: dict, i) -> dict:
  """Step i's batch of a chunk of host batches, each input (S, B) (traced)."""
  return jax.tree_util.tree_map(lambda x: x[i], inputs)


def _padded_batch(users, items, labels, valid):
  zero = lambda x: jnp.where(valid, x, jnp.zeros_like(x))
  return dict(users=zero(users), items=zero(items), labels=zero(labels),
              weights=valid.astype(jnp.float32))


class _Plan:
  """Sizes shared by both executors."""

  def __init__(self, spec: epoch_lib.EpochSpec, batch_size: int, steps_per_chunk: int):
    self.spec = spec
    self.batch_size = batch_size
    self.steps_per_chunk = steps_per_chunk
    self.num_examples = spec.num_examples
    self.num_steps = epoch_lib.num_batches_per_epoch(spec.num_positives, spec.num_negatives,
                                                     batch_size)
    self.num_chunks = -(-self.num_steps // steps_per_chunk)
    if self.num_chunks * steps_per_chunk * batch_size >= 2**32:
      raise ValueError('an epoch of 2^32 or more example slots')

  def steps_in(self, chunk: int) -> int:
    return min(self.steps_per_chunk, self.num_steps - chunk * self.steps_per_chunk)


class HostBatches(_Plan):
  """NumPy executor: this process's columns of each global batch, made ahead on threads."""

  def __init__(self, spec, arrays, seed: int, batch_size: int, steps_per_chunk: int,
               layout: sharding.Layout, threads: int = 0, chunks_ahead: int = 0,
               last_epoch: int | None = None):
    super().__init__(spec, batch_size, steps_per_chunk)
    self.arrays, self.seed, self.layout = arrays, seed, layout
    processes = jax.process_count()
    self.width = batch_size // processes
    self.first_column = jax.process_index() * self.width
    self.threads = threads or max(1, min(8, os.cpu_count() or 1))
    self.chunks_ahead = chunks_ahead or self.threads + 1
    self.last_epoch = last_epoch
    self.wait_seconds = 0.0
    self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, 'ncf-batches')
    self._pending = collections.deque()  # (epoch, chunk, arrays, futures)
    self._next = None  # (epoch, chunk) to submit next
    self._keys = {}

  def _epoch_keys(self, epoch: int) -> np.ndarray:
    if epoch not in self._keys:
      self._keys = {epoch: epoch_lib.epoch_keys(self.seed, epoch)}
    return self._keys[epoch]

  def local_chunk(self, epoch: int, chunk: int) -> tuple[dict, list]:
    """This process's (S, B / processes) arrays of a chunk and the futures filling them."""
    s, width = self.steps_per_chunk, self.width
    out = dict(users=np.zeros((s, width), np.int32), items=np.zeros((s, width), np.int32),
               labels=np.zeros((s, width), np.float32), weights=np.zeros((s, width), np.float32))
    rows = self.steps_in(chunk)
    first = chunk * s
    g = ((first + np.arange(rows, dtype=np.int64))[:, None] * self.batch_size
         + self.first_column + np.arange(width, dtype=np.int64)).ravel()
    g = g[g < self.num_examples]  # the rest stay padding (weight 0)
    keys = self._epoch_keys(epoch)
    flat = {k: v.reshape(-1) for k, v in out.items()}
    row = g // self.batch_size - first
    position = row * width + (g % self.batch_size - self.first_column)
    futures = [self._pool.submit(self._fill, flat, keys, g[i:i + PIECE], position[i:i + PIECE])
               for i in range(0, len(g), PIECE)]
    return out, futures

  def _fill(self, flat, keys, g, position):
    users, items, labels = epoch_lib.host_examples(self.spec, self.arrays, keys, g)
    flat['users'][position], flat['items'][position] = users, items
    flat['labels'][position], flat['weights'][position] = labels, 1.0

  def _submit_ahead(self) -> None:
    while len(self._pending) < self.chunks_ahead and self._next is not None:
      epoch, chunk = self._next
      self._pending.append((epoch, chunk, *self.local_chunk(epoch, chunk)))
      chunk += 1
      if chunk == self.num_chunks:
        epoch, chunk = epoch + 1, 0
      self._next = None if self.last_epoch is not None and epoch > self.last_epoch else (epoch,
                                                                                          chunk)

  def start(self, epoch: int) -> None:
    if not self._pending or self._pending[0][:2] != (epoch, 0):
      self._discard()
      self._next = (epoch, 0)
    self._submit_ahead()

  def local_chunks(self, epoch: int) -> Iterator[tuple[dict, int]]:
    """(this process's NumPy arrays, number of steps) of each chunk of `epoch`, in order."""
    self.start(epoch)
    for chunk in range(self.num_chunks):
      self._submit_ahead()
      _, _, local, futures = self._pending.popleft()
      t0 = time.perf_counter()
      for f in futures:
        f.result()
      self.wait_seconds += time.perf_counter() - t0
      self._submit_ahead()
      yield local, self.steps_in(chunk)

  def chunks(self, epoch: int) -> Iterator[tuple[dict, int]]:
    for local, num_steps in self.local_chunks(epoch):
      yield self.put(local), num_steps

  def put(self, local: dict) -> dict:
    # One call for the four arrays: on one process, one batched transfer.
    return jax.make_array_from_process_local_data(
        self.layout.chunk, local, (self.steps_per_chunk, self.batch_size))

  # One function for every host source: `train` keeps a run's compiled chunk for the next.
  select = staticmethod(take_step)

  def inputs_sharding(self):
    return {k: self.layout.chunk for k in ('users', 'items', 'labels', 'weights')}

  def _discard(self) -> None:
    for _, _, _, futures in self._pending:
      for f in futures:
        f.cancel()
    for _, _, _, futures in self._pending:
      concurrent.futures.wait(futures)
    self._pending.clear()

  def close(self) -> None:
    self._discard()
    self._pool.shutdown(wait=True)


class DeviceBatches(_Plan):
  """jax.numpy executor: each step's batch is computed inside the compiled chunk."""

  def __init__(self, spec, arrays, seed: int, batch_size: int, steps_per_chunk: int,
               layout: sharding.Layout):
    super().__init__(spec, batch_size, steps_per_chunk)
    self.seed, self.layout = seed, layout
    self.wait_seconds = 0.0
    self.arrays = {k: layout.put_global(v, P()) for k, v in arrays.items()}
    self._batch = NamedSharding(layout.mesh, P(sharding.DATA))

  def start(self, epoch: int) -> None:
    pass

  def chunks(self, epoch: int) -> Iterator[tuple[dict, int]]:
    keys = self.layout.put_global(epoch_lib.epoch_keys(self.seed, epoch), P())
    for chunk in range(self.num_chunks):
      yield (dict(arrays=self.arrays, keys=keys,
                  first=np.int32(chunk * self.steps_per_chunk)), self.steps_in(chunk))

  def select(self, inputs, i):
    step = (inputs['first'] + i).astype(jnp.uint32)
    g = step * jnp.uint32(self.batch_size) + jnp.arange(self.batch_size, dtype=jnp.uint32)
    g = jax.lax.with_sharding_constraint(g, self._batch)
    valid = g < self.num_examples
    examples = lambda arrays, keys, g: epoch_lib.device_examples(self.spec, arrays, keys, g)
    if self.layout.num_devices > 1:
      # Each device its own slice: the lanes left go through a buffer per device, with no
      # exchange between devices (the global batch's compaction would gather it).
      examples = jax.shard_map(examples, mesh=self.layout.mesh,
                               in_specs=(P(), P(), P(sharding.DATA)),
                               out_specs=P(sharding.DATA), check_vma=False)
    users, items, labels = examples(inputs['arrays'], inputs['keys'],
                                    jnp.minimum(g, jnp.uint32(self.num_examples - 1)))
    return _padded_batch(users, items, labels, valid)

  def inputs_sharding(self):
    replicated = self.layout.replicated
    return dict(arrays={k: replicated for k in self.arrays}, keys=replicated, first=replicated)

  def close(self) -> None:
    pass


def create(sampler: str, spec, arrays, seed: int, batch_size: int, steps_per_chunk: int,
           layout: sharding.Layout, last_epoch: int | None = None) -> BatchSource:
  """The batch source of `sampler` ('host' | 'device')."""
  if sampler == 'device':
    return DeviceBatches(spec, arrays, seed, batch_size, steps_per_chunk, layout)
  return HostBatches(spec, arrays, seed, batch_size, steps_per_chunk, layout,
                     last_epoch=last_epoch)
