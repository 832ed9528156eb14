"""Reading a trained run: its best checkpoint as a model with its parameters, for
`recommend`, the ensemble, the pretraining merge and reports.

A reader takes no lock, builds no optimizer and needs no mesh: the parameters land on one
device, whatever mesh wrote them. It stands above `run_dir` (the folder's files) and
`models` (what the parameters mean); nothing in the training core imports it.
"""

import dataclasses

import flax
import jax
import ml_collections

from ncf_jax import checkpoints as checkpoints_lib
from ncf_jax import models
from ncf_jax import run_dir as run_dir_lib
from ncf_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A run's best checkpoint as a model with its parameters."""
  config: ml_collections.ConfigDict
  model: models.ScoringModel
  params: dict
  epoch: int
  workdir: str


def _table_rows(params, model: models.ScoringModel, where: str) -> dict[str, int]:
  """{'users': rows, 'items': rows} of the embedding tables in stored params."""
  flat = flax.traverse_util.flatten_dict(params if isinstance(params, dict) else {})
  rows = {}
  for path, ids in model.embedding_tables().items():
    if path in flat and len(getattr(flat[path], 'shape', ())) >= 1:
      rows.setdefault(ids, int(flat[path].shape[0]))
  if set(rows) != {'users', 'items'}:
    raise CheckpointError(f'{where}: no user and item embedding tables of a '
                          f'{type(model).__name__} model')
  return rows


def _restore_best_params(run: run_dir_lib.RunDir) -> tuple[dict, int]:
  """(params, epoch) of the best checkpoint, on one device, digests verified.

  The one place a reader restores: the whole stored tree (the optimizer's slots too, as
  the checkpoint itself describes them, so no optimizer is built), of which only the
  params are kept. A params-only restore in `checkpoints` replaces this call when it lands.
  """
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  stored = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), run.stored_best_tree())
  state, epoch = run.restore_best(stored)
  return state['params'], epoch


def load_best(workdir: str, num_users: int | None = None,
              num_items: int | None = None) -> TrainedModel:
  """The best checkpoint of a finished (or running) run, read without a lock.

  The model is sized from the stored tables unless `num_users` and `num_items` are
  given (then a stored tree of another size is an error naming the checkpoint).
  """
  run = run_dir_lib.RunDir(workdir)
  config = run.read_config()
  params, epoch = _restore_best_params(run)
  where = f'{run.file(run_dir_lib.CHECKPOINTS)}/best/{epoch}'
  if num_users is None or num_items is None:
    rows = _table_rows(params, models.create_model(config, 1, 1), where)
    num_users, num_items = rows['users'], rows['items']
  model = models.create_model(config, num_users, num_items)
  checkpoints_lib.check_tree_matches({'params': models.abstract_params(model)},
                                     {'params': params}, where)
  return TrainedModel(config, model, params, epoch, run.path)
