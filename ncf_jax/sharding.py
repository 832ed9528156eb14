"""How a run lays its arrays out over devices: one `data` mesh axis over every device used.

- Batches: the global batch is split along `data` (a chunk of S batches of B examples is
  sharded `P(None, 'data')`); `config.batch_size` stays the global batch.
- Embedding tables: each table's `tables.TableSpec.placement` (from
  `config.embedding_sharding`: auto | replicated | rows). `replicated` copies a table on
  every device and reduces its gradients (data parallelism, like NVIDIA's NCF); `rows`
  splits its rows along the same `data` axis (`P('data', None)`), so a table larger than one
  device's memory fits, and the train step routes ids to the rows' owners (`row_sharded`).
  Optimizer state mirrors its parameters. Padding: see `tables`.
- Evaluation splits each block of users along `data`.

With several processes (`jax.distributed`), the mesh spans every process's devices and each
process hands over its own slice of every global batch.
"""

import dataclasses
from typing import Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from ncf_jax import tables as tables_lib
from ncf_jax.errors import ConfigError

DATA = 'data'
EMBEDDING_SHARDINGS = tables_lib.EMBEDDING_SHARDINGS


def num_devices_for(requested: int, batch_size: int, available: int) -> int:
  """The devices a run uses: `requested` (0: the most that divide the global batch).

  ConfigError for a request that exceeds the devices or does not divide the batch.
  """
  if requested < 0:
    raise ConfigError(f'config.num_devices={requested}: must be >= 0 (0: all that fit)')
  if requested == 0:
    return max(n for n in range(1, available + 1) if batch_size % n == 0)
  if requested > available:
    raise ConfigError(f'config.num_devices={requested}: only {available} devices are available')
  if batch_size % requested:
    raise ConfigError(f'config.num_devices={requested} does not divide config.batch_size='
                      f'{batch_size} (the global batch is split evenly over the devices)')
  return requested


def _contains(path: tuple, table: tuple) -> bool:
  """Whether `table` occurs in `path` as consecutive keys (an optimizer slot of the table)."""
  return any(path[i:i + len(table)] == table for i in range(len(path) - len(table) + 1))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The mesh of a run and the shardings of its state, batches and evaluation inputs."""
  mesh: Mesh
  embedding_sharding: str = 'replicated'

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def chunk(self) -> NamedSharding:
    """(steps, batch) arrays: the batch axis split over devices."""
    return NamedSharding(self.mesh, P(None, DATA))

  def state_shardings(self, abstract_state, specs):
    """The sharding of every leaf of a train state: each table placed by its spec (`rows`:
    `P('data', None)`), and so each optimizer slot of it (a leaf under the table's path, or
    under a path containing it, with the table's rows); the rest replicated."""
    rows = NamedSharding(self.mesh, P(DATA, None))
    sharded = [spec for spec in specs if spec.placement == 'rows']

    def sharding(path, leaf):
      names = tuple(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', None))) for k in path)
      if getattr(leaf, 'ndim', 0) >= 1:
        for spec in sharded:
          if _contains(names, spec.path) and leaf.shape[0] == spec.shape[0]:
            return rows
      return self.replicated

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)

  def state_specs(self, abstract_state, specs):
    """`state_shardings` as PartitionSpecs (what `shard_map` takes)."""
    return jax.tree_util.tree_map(lambda s: s.spec, self.state_shardings(abstract_state, specs))

  def put_chunk(self, chunk: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """A chunk of global batches (every process holds all of it) as sharded device arrays;
    each process hands over its own slice of the batch axis."""
    process, processes = jax.process_index(), jax.process_count()
    out = {}
    for name, value in chunk.items():
      width = value.shape[1] // processes
      local = value[:, process * width:(process + 1) * width]
      out[name] = jax.make_array_from_process_local_data(self.chunk, local, value.shape)
    return out

  def put_global(self, value: np.ndarray, spec: P) -> jax.Array:
    """A host array every process holds in full, laid out by `spec`."""
    sharding = NamedSharding(self.mesh, spec)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  def table_bytes_per_device(self, params, specs) -> int:
    """Bytes of embedding-table data on the most loaded local device (addressable shards)."""
    per_device = {}
    for spec in specs:
      leaf = params
      for key in spec.path:
        leaf = leaf[key]
      for shard in leaf.addressable_shards:
        per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values())


def single_device_layout() -> Layout:
  """The default device alone (what a library call without a layout runs on)."""
  return Layout(Mesh(np.array(jax.devices()[:1]), (DATA,)))


def create_layout(num_devices: int, batch_size: int,
                  embedding_sharding: str = 'replicated') -> Layout:
  """The layout of `num_devices` devices of jax.devices() (0: all that divide `batch_size`),
  with `embedding_sharding` (auto | replicated | rows) for the tables."""
  devices = jax.devices()
  count = num_devices_for(int(num_devices), int(batch_size), len(devices))
  if jax.process_count() > 1 and count != len(devices):
    raise ConfigError(f'config.num_devices: a run of {jax.process_count()} processes uses all '
                      f'{len(devices)} devices, and they must divide config.batch_size='
                      f'{batch_size}')
  return Layout(Mesh(np.array(devices[:count]), (DATA,)), embedding_sharding)
