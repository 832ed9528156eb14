"""NeuMF initialised from pretrained GMF and MLP runs (He et al., 2017, section 3.4.1).

`merged_params(sources, data, abstract_params)` is the hook `train.py` calls when
`config.gmf_workdir` / `config.mlp_workdir` are set: it restores each run's
best parameters (`load_best_params`, through `trained_run`) and merges them
(`merge_params`) as the original code does:

  GMF embeddings <- GMF run; MLP embeddings and hidden layers <- MLP run;
  head kernel = concat(alpha * h_gmf, (1 - alpha) * h_mlp);
  head bias   = alpha * b_gmf + (1 - alpha) * b_mlp.

So with alpha = 0.5 the merged NeuMF logit is the mean of the two logits, and
with alpha = 1 it is the GMF logit. Every part is checked against NeuMF's own
`jax.eval_shape` tree first: another num_factors, tower or dataset size fails
with the run's workdir and the first mismatching parameter path.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections

from ncf_jax import checkpoints as checkpoints_lib
from ncf_jax import run_dir as run_dir_lib
from ncf_jax import run_settings
from ncf_jax import trained_run
from ncf_jax.data import registry
from ncf_jax.errors import CheckpointError, ConfigError


def load_best_params(workdir: str,
                     expected_model: str | None) -> tuple[dict, ml_collections.ConfigDict]:
  """(params, config) of the best checkpoint in `workdir`, a run of `expected_model`.

  The sizes come from the stored tree, so no data is loaded. `expected_model`
  None accepts any model.
  """
  workdir = os.path.abspath(workdir)
  model = run_dir_lib.RunDir(workdir).read_config().get('model')
  if expected_model is not None and model != expected_model:
    raise CheckpointError(f'{workdir}: a {model!r} run (config.json), expected {expected_model!r}')
  trained = trained_run.load_best(workdir)
  return trained.params, trained.config


def _part(abstract: dict, tower: str, head_rows: slice) -> dict:
  """The abstract tree a single-tower model must have to fill `tower` and its head rows."""
  kernel = abstract['head']['kernel']
  rows = len(range(*head_rows.indices(kernel.shape[0])))
  return {tower: abstract[tower],
          'head': {'kernel': jax.ShapeDtypeStruct((rows, *kernel.shape[1:]), kernel.dtype),
                   'bias': abstract['head']['bias']}}


def _repad(params: dict, specs, tower: str) -> dict:
  """`params` with `tower`'s tables cut to their specs' real rows and zero-padded to the
  padded rows (the pretraining runs may have padded them for another placement)."""
  params = {**params, tower: dict(params[tower])}
  for spec in specs:
    table = params[tower].get(spec.path[-1]) if spec.path[0] == tower else None
    if table is not None and table.ndim == 2 and table.shape[0] >= spec.rows:
      real = jnp.asarray(table)[:spec.rows]
      params[tower][spec.path[-1]] = jnp.pad(real, ((0, spec.shape[0] - spec.rows), (0, 0)))
  return params


def merge_params(gmf_params: dict, mlp_params: dict, neumf_abstract_params: dict, alpha: float,
                 gmf_where: str = 'GMF params', mlp_where: str = 'MLP params',
                 specs=()) -> dict:
  """NeuMF params from GMF and MLP params, in the original code's way.

  `neumf_abstract_params` (from `jax.eval_shape`) fixes the structure, shapes
  and dtypes; `gmf_where`/`mlp_where` (the runs' workdirs) name the source in
  the CheckpointError a mismatch raises. With NeuMF's table `specs`, the towers'
  tables are re-padded to them first (their real rows kept).
  """
  if specs:
    gmf_params, mlp_params = _repad(gmf_params, specs, 'gmf'), _repad(mlp_params, specs, 'mlp')
  if not 0.0 <= alpha <= 1.0:
    raise ConfigError(f'config.alpha={alpha}: must be in [0, 1]')
  for tower in ('gmf', 'mlp', 'head'):
    if tower not in neumf_abstract_params:
      raise CheckpointError(f'target params: no {tower!r} part (not a NeuMF tree)')
  num_gmf = neumf_abstract_params['gmf']['user_embedding'].shape[1]
  checkpoints_lib.check_tree_matches(
      _part(neumf_abstract_params, 'gmf', slice(0, num_gmf)), gmf_params, gmf_where)
  checkpoints_lib.check_tree_matches(
      _part(neumf_abstract_params, 'mlp', slice(num_gmf, None)), mlp_params, mlp_where)

  head = {'kernel': jnp.concatenate([alpha * jnp.asarray(gmf_params['head']['kernel']),
                                     (1 - alpha) * jnp.asarray(mlp_params['head']['kernel'])],
                                    axis=0),
          'bias': (alpha * jnp.asarray(gmf_params['head']['bias'])
                   + (1 - alpha) * jnp.asarray(mlp_params['head']['bias']))}
  merged = {'gmf': gmf_params['gmf'], 'mlp': mlp_params['mlp'], 'head': head}
  # Cast to the target dtypes (a run could have stored another precision).
  return jax.tree_util.tree_map(lambda a, x: jnp.asarray(x, a.dtype), neumf_abstract_params,
                                merged)


def _check_same_data(data: registry.DataSettings, source: registry.DataSettings,
                     workdir: str) -> None:
  """A pretrained run on other data would merge tables whose rows mean other users."""
  if source.dataset != data.dataset:
    raise CheckpointError(f'{workdir}: trained on dataset {source.dataset!r}, '
                          f'config.dataset is {data.dataset!r}')
  if source.validation != data.validation:
    # Without the holdout, pretraining trained on the items NeuMF selects epochs on.
    raise CheckpointError(f'{workdir}: trained with validation={source.validation}, '
                          f'config.validation is {data.validation}')
  if data.dataset == 'synthetic' and (source.synthetic, source.seed) != (data.synthetic,
                                                                           data.seed):
    # The synthetic data is a function of its settings and the seed.
    raise CheckpointError(f'{workdir}: trained on other synthetic data (config.synthetic or '
                          'config.seed differ)')


def merged_params(sources: run_settings.PretrainSources, data: registry.DataSettings,
                  abstract_params: dict, specs=()) -> dict:
  """NeuMF params merged from the best checkpoints of `sources`' GMF and MLP runs (both
  trained on `data`) with `sources.alpha` (tables re-padded to NeuMF's table `specs`)."""
  gmf_dir, mlp_dir = os.path.abspath(sources.gmf_workdir), os.path.abspath(sources.mlp_workdir)
  gmf_params, gmf_config = load_best_params(gmf_dir, 'gmf')
  mlp_params, mlp_config = load_best_params(mlp_dir, 'mlp')
  _check_same_data(data, run_settings.data_settings(gmf_config), gmf_dir)
  _check_same_data(data, run_settings.data_settings(mlp_config), mlp_dir)
  return merge_params(gmf_params, mlp_params, abstract_params, sources.alpha, gmf_where=gmf_dir,
                      mlp_where=mlp_dir, specs=specs)
