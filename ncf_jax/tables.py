"""Embedding tables, each described once: a `TableSpec` per table, read by the models (which
create the parameter), sharding (placement), optimizers and the train step (which parameters
are tables, indexed by which ids), pretraining and checkpoint readers.

A model declares its tables (path, ids, real rows, width, initialiser); `plan` adds what a
run decides: the placement and, from it, the padded rows.

- `replicated`: the table is whole on every device; rows are not padded.
- `rows`: the table's rows are split evenly over the devices (device d owns the contiguous
  rows [d * R/N, (d+1) * R/N)). Padded rows: a multiple of 1,024 on a power-of-two device
  count (any such mesh up to 1,024 devices divides it, so a state moves between them), of
  lcm(1,024, N) on any other count N (6 devices: 3,072). Padding rows are zero and never
  looked up (ids are below the real rows).
- `auto` (`config.embedding_sharding`): a table of at least `AUTO_ROWS_MIN_BYTES` float32
  bytes is row-sharded on more than one device (and padded as under `rows` even on one, so
  its state moves between one device and many); smaller tables are replicated. Replicating a
  small table costs an all-reduce of its gradient; row-sharding costs all-to-alls sized by
  the batch, whatever the table's size.
"""

import dataclasses
import math
from typing import Literal, Mapping, Sequence

import flax.linen as nn
import jax

from ncf_jax import row_init

ParamPath = tuple[str, ...]
IdsKey = Literal['users', 'items']  # which batch ids index a table
PLACEMENTS = ('replicated', 'rows')
EMBEDDING_SHARDINGS = ('auto', 'replicated', 'rows')
ROW_MULTIPLE = 1024
# `auto` row-shards a table from this size up (256 MiB of float32: a million rows of width
# 64). ML-20M's tables (at most 138,493 rows) stay replicated, as NVIDIA's NCF has them.
AUTO_ROWS_MIN_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """One embedding table: where it sits in the params, what indexes it, its size, its
  initialiser and its placement over devices."""
  path: ParamPath  # in the params tree, e.g. ('gmf', 'user_embedding')
  ids: IdsKey  # the batch ids that index it
  rows: int  # real rows (users or items)
  width: int
  stddev: float = 0.01  # N(0, stddev) initial rows; 0: zeros
  padded_rows: int = 0  # rows of the parameter (>= rows); 0: set by `plan`
  placement: str = 'replicated'  # replicated | rows

  @property
  def name(self) -> str:
    return '/'.join(self.path)

  @property
  def shape(self) -> tuple[int, int]:
    return (self.padded_rows or self.rows, self.width)

  @property
  def nbytes(self) -> int:
    """float32 bytes of the parameter (optimizer moments add as many each)."""
    return 4 * self.shape[0] * self.width

  def shard_rows(self, num_devices: int) -> int:
    """Rows each device holds: all of them if replicated."""
    return self.shape[0] // num_devices if self.placement == 'rows' else self.shape[0]

  def create(self, module: nn.Module) -> jax.Array:
    """The parameter in `module` (named by the path's last key): the real rows drawn as an
    unpadded table's would be (`jax.random.normal(key, shape) * stddev`, or zeros), then
    zero rows up to `padded_rows`. The values are a function of each row's global index
    (`row_init`): a row-sharded table created under `jax.set_mesh(mesh)` is drawn by each
    device for its own rows, to the same numbers on any mesh."""
    init = row_init.initializer(self.rows, self.stddev, self.placement == 'rows',
                                row_init.AXIS)
    return module.param(self.path[-1], init, self.shape)


def row_multiple(num_devices: int) -> int:
  """What row-sharded tables' rows are rounded up to on `num_devices` devices."""
  if num_devices & (num_devices - 1) == 0 and num_devices <= ROW_MULTIPLE:
    return ROW_MULTIPLE
  return math.lcm(ROW_MULTIPLE, num_devices)


def padded(num_rows: int, multiple: int) -> int:
  """`num_rows` rounded up to a multiple of `multiple`."""
  return -(-num_rows // multiple) * multiple


def placement(spec: TableSpec, embedding_sharding: str, num_devices: int) -> str:
  """Where `spec`'s table lives under `embedding_sharding` on `num_devices` devices."""
  if embedding_sharding == 'auto':
    large = spec.nbytes >= AUTO_ROWS_MIN_BYTES
    return 'rows' if large and num_devices > 1 else 'replicated'
  return embedding_sharding


def plan(declared: Sequence[TableSpec], embedding_sharding: str = 'replicated',
         num_devices: int = 1) -> tuple[TableSpec, ...]:
  """The declared tables with their placement and padded rows (see the module doc)."""
  out = []
  for spec in declared:
    spec = dataclasses.replace(spec, padded_rows=0)
    where = placement(spec, embedding_sharding, num_devices)
    pad = where == 'rows' or (embedding_sharding == 'auto'
                              and spec.nbytes >= AUTO_ROWS_MIN_BYTES)
    rows = padded(spec.rows, row_multiple(num_devices)) if pad else spec.rows
    out.append(dataclasses.replace(spec, padded_rows=rows, placement=where))
  return tuple(out)


def by_path(specs: Sequence[TableSpec]) -> dict[ParamPath, TableSpec]:
  """{path: spec}: what `optimizers` and `train_step` look tables up by."""
  return {spec.path: spec for spec in specs}


def ids_by_path(specs: Sequence[TableSpec] | Mapping) -> dict[ParamPath, IdsKey]:
  """{path: 'users' | 'items'}."""
  values = specs.values() if isinstance(specs, Mapping) else specs
  return {spec.path: spec.ids for spec in values}


def describe(specs: Sequence[TableSpec], num_devices: int) -> str:
  """One line naming each table's placement and size (the run's first lines)."""
  parts = []
  for spec in specs:
    parts.append(f'{spec.name} {spec.rows}x{spec.width} {spec.placement}'
                 + (f' ({spec.shape[0]} rows, {spec.shard_rows(num_devices)} per device)'
                    if spec.placement == 'rows' else ''))
  return 'tables: ' + ', '.join(parts)
