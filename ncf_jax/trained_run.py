"""Reading a trained run: its best checkpoint as a model with its parameters, for
`recommend`, the ensemble, the pretraining merge and reports.

A reader takes no lock, builds no optimizer and needs no mesh: the parameters land on one
device, whatever mesh wrote them. It stands above `run_dir` (the folder's files) and
`models` (what the parameters mean); nothing in the training core imports it.
"""

import dataclasses

import flax
import ml_collections

from ncf_jax import models
from ncf_jax import run_dir as run_dir_lib
from ncf_jax import run_settings
from ncf_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A run's best checkpoint as a model with its parameters."""
  config: ml_collections.ConfigDict
  model: models.ScoringModel
  params: dict
  epoch: int
  workdir: str


def _table_rows(tree, model: models.ScoringModel, where: str) -> dict[str, int]:
  """{'users': rows, 'items': rows} of the embedding tables in a stored state."""
  flat = flax.traverse_util.flatten_dict(tree.get('params', {}) if isinstance(tree, dict) else {})
  rows = {}
  for path, ids in model.embedding_tables().items():
    if path in flat and len(getattr(flat[path], 'shape', ())) >= 1:
      rows.setdefault(ids, int(flat[path].shape[0]))
  if set(rows) != {'users', 'items'}:
    raise CheckpointError(f'{where}: no user and item embedding tables of a '
                          f'{type(model).__name__} model')
  return rows


def load_best(workdir: str, num_users: int | None = None,
              num_items: int | None = None) -> TrainedModel:
  """The best checkpoint of a finished (or running) run, read without a lock: its
  parameters alone (no optimizer state is read or built), on one device.

  The model is sized from the stored tables unless `num_users` and `num_items` are
  given (then a stored tree of another size is an error naming the checkpoint).
  """
  run = run_dir_lib.RunDir(workdir)
  config = run.read_config()
  settings = run_settings.model_settings(config)
  if num_users is None or num_items is None:
    rows = _table_rows(run.stored_best_tree(), models.create_model(settings, 1, 1),
                       run.file(run_dir_lib.CHECKPOINTS))
    num_users, num_items = rows['users'], rows['items']
  model = models.create_model(settings, num_users, num_items)
  params, epoch = run.restore_best_params(models.abstract_params(model),
                                          tables=model.table_specs())
  return TrainedModel(config, model, params, epoch, run.path)
