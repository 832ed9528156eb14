"""A trained model for any JAX program, without ncf_jax: `jax.export` of its scoring function.

  python -m ncf_jax.export --workdir=W --out=E

writes the folder E:

  score.jaxexport  `jax.export` serialization of score(params, users, items) -> (B,) float32
                   predicted probabilities (the sigmoid of the logits, as
                   `Recommender.score` returns them); users and items are (B,) int32 indices,
                   B symbolic (any batch size); lowered for the platforms of --platforms
  params.npz       the best checkpoint's params: its leaves in the order of the exported
                   function's input tree, named leaf_0000, leaf_0001, ...
  users.tsv        line i: the original id of user index i (when the run's data has id maps)
  items.tsv        the same for items
  export.json      what was exported: workdir, epoch, model, sizes, data fingerprint, jax

Loading it needs only jax, numpy and flatbuffers (README: "Taking a model elsewhere");
`pip install 'ncf-jax[export]'` adds flatbuffers here. The folder is
written next to E and renamed into place; an earlier export in E is replaced.
"""

import json
import os
import shutil
import tempfile

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from ncf_jax import cli
from ncf_jax import provenance
from ncf_jax import run_dir
from ncf_jax.data import id_maps as id_maps_lib
from ncf_jax.errors import ConfigError

SCORE_FILE = 'score.jaxexport'
PARAMS_FILE = 'params.npz'
INFO_FILE = 'export.json'
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')


def leaf_name(index: int) -> str:
  return f'leaf_{index:04d}'


def _storable(leaf) -> np.ndarray:
  """A leaf as NumPy can save it: float32 for dtypes .npz cannot hold (bfloat16)."""
  array = np.asarray(leaf)
  return array.astype(np.float32) if array.dtype.kind == 'V' or array.dtype.name == 'bfloat16' \
      else array


def export_scoring(model, params, platforms=DEFAULT_PLATFORMS):
  """(jax.export.Exported of score(params, users, items), the params leaves to save)."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  stored = [_storable(leaf) for leaf in leaves]
  dtypes = [jnp.asarray(leaf).dtype for leaf in leaves]

  def score(params, users, items):
    # Back to the model's own dtypes (a no-op unless a leaf was widened to be stored).
    params = jax.tree_util.tree_map(lambda x, d: x.astype(d), params,
                                    jax.tree_util.tree_unflatten(treedef, dtypes))
    return jax.nn.sigmoid(model.apply({'params': params}, users, items)).astype(jnp.float32)

  (batch,) = jax.export.symbolic_shape('b')
  ids = jax.ShapeDtypeStruct((batch,), jnp.int32)
  params_spec = jax.tree_util.tree_unflatten(
      treedef, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in stored])
  exported = jax.export.export(jax.jit(score), platforms=tuple(platforms))(params_spec, ids, ids)
  return exported, stored


def _check_out(out: str) -> None:
  if os.path.exists(out) and not os.path.isdir(out):
    raise ConfigError(f'--out={out}: is a file')
  if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, SCORE_FILE)):
    raise ConfigError(f'--out={out}: a folder with other files (not an earlier export); '
                      'choose a new or empty folder')


def export_workdir(workdir: str, out: str, platforms=DEFAULT_PLATFORMS) -> dict:
  """Writes the export folder `out` of the run in `workdir`; returns export.json's content."""
  out = os.path.abspath(out)
  _check_out(out)
  try:
    import flatbuffers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:  # what jax.export's serialization needs, found before any work
    raise ConfigError("jax.export serialization needs the flatbuffers package: pip install "
                      "'ncf-jax[export]' (or flatbuffers)") from None
  dataset = provenance.load_run_dataset(workdir)  # id maps, checked against the run's data
  trained = run_dir.load_best(workdir, dataset.num_users, dataset.num_items)
  exported, leaves = export_scoring(trained.model, trained.params, platforms)
  info = dict(workdir=os.path.abspath(workdir), epoch=int(trained.epoch),
              model=trained.config.model, num_users=dataset.num_users,
              num_items=dataset.num_items, platforms=list(exported.platforms),
              data_fingerprint=(provenance.recorded(run_dir.RunDir(workdir)) or {}).get(
                  'data_fingerprint'),
              jax_version=jax.__version__, num_leaves=len(leaves))
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(out)}.tmp-')
  try:
    with open(os.path.join(staging, SCORE_FILE), 'wb') as f:
      f.write(exported.serialize())
    np.savez(os.path.join(staging, PARAMS_FILE),
             **{leaf_name(i): leaf for i, leaf in enumerate(leaves)})
    maps = id_maps_lib.id_maps_for(dataset)
    if maps is not None:
      for name in (id_maps_lib.USERS, id_maps_lib.ITEMS):
        shutil.copyfile(os.path.join(dataset.source_dir, name), os.path.join(staging, name))
    with open(os.path.join(staging, INFO_FILE), 'w', encoding='utf-8') as f:
      f.write(json.dumps(info, indent=2) + '\n')
    if os.path.isdir(out):  # an earlier export (checked above): replaced
      shutil.rmtree(out)
    os.rename(staging, out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return info


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run, so importing this module defines no flags."""
  flags.DEFINE_string('workdir', None, 'A trained run (its best checkpoint is exported).')
  flags.DEFINE_string('out', None, 'The export folder to write (replaces an earlier export).')
  flags.DEFINE_list('platforms', list(DEFAULT_PLATFORMS),
                    'Platforms to lower for (jax.export): any of cpu, cuda, rocm, tpu.')


def main(argv: list[str]) -> None:
  del argv
  if not FLAGS.workdir or not FLAGS.out:
    raise ConfigError('--workdir and --out are required')
  info = export_workdir(FLAGS.workdir, FLAGS.out, FLAGS.platforms)
  print(f'exported epoch {info["epoch"]} of {info["workdir"]} ({info["model"]}, '
        f'{info["num_users"]} users, {info["num_items"]} items; '
        f'{", ".join(info["platforms"])}) to {os.path.abspath(FLAGS.out)}')


if __name__ == '__main__':
  cli.run(main, define_flags)
