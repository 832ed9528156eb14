"""Several trained runs as one model: the mean of their logits.

  python -m ncf_jax.ensemble --workdir=A --workdir=B [--workdir=C ...] [--top_k=10]

prints the ensemble's test HR/NDCG@k on the sampled negatives and in full ranking as
one JSON object. Each member is its run's best checkpoint, i.e. the epoch that run
chose on its own selection split, so nothing here looks at test to choose. Members
must be trained on the same data (checked on their config.json, fingerprint included). With a
validation holdout carved per seed, members of different seeds hold out different
interactions, so the ensemble has no clean validation split of its own and reports
test only.
"""

import json
from typing import Sequence

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from ncf_jax import cli
from ncf_jax import evaluation
from ncf_jax import provenance
from ncf_jax import run_dir
from ncf_jax.errors import ConfigError

# Fields that must agree for members to rank the same test set against the same items.
SAME_DATA_FIELDS = ('dataset', 'top_k')


class Ensemble(nn.Module):
  """The mean logit of `members`; params are {'members_0': ..., 'members_1': ...}."""
  members: Sequence[nn.Module]

  def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
    return jnp.mean(jnp.stack([m(users, items) for m in self.members]), axis=0)

  @property
  def pair_width(self) -> int:
    return max(m.pair_width for m in self.members)

  def score_matrix(self, users: jax.Array, items: jax.Array) -> jax.Array:
    return jnp.mean(jnp.stack([m.score_matrix(users, items) for m in self.members]), axis=0)


def load_ensemble(workdirs: Sequence[str]) -> tuple[Ensemble, dict, object]:
  """(ensemble, its params, the first member's dataset) from trained workdirs."""
  if not workdirs:
    raise ConfigError('an ensemble needs at least one workdir')
  configs = [run_dir.RunDir(w).read_config() for w in workdirs]
  fields = SAME_DATA_FIELDS + (('synthetic',) if configs[0].get('dataset') == 'synthetic' else ())
  for workdir, config in zip(workdirs[1:], configs[1:]):
    for field in fields:
      if config.get(field) != configs[0].get(field):
        raise ConfigError(f'{workdir}: config.{field}={config.get(field)!r}, but '
                          f'{workdirs[0]} has {configs[0].get(field)!r}')
  provenance.check_same_data(workdirs)
  dataset = provenance.load_run_dataset(workdirs[0])
  members, params = [], {}
  for i, workdir in enumerate(workdirs):
    trained = run_dir.load_best(workdir, dataset.num_users, dataset.num_items)
    members.append(trained.model)
    params[f'members_{i}'] = trained.params
  return Ensemble(tuple(members)), params, dataset


def evaluate_ensemble(workdirs: Sequence[str], top_k: int = 10) -> dict:
  """Test HR/NDCG@top_k of the ensemble: sampled negatives and full ranking."""
  if top_k < 1:  # HR@0 is 0 whatever the model: a question without an answer
    raise ConfigError(f'--top_k={top_k}: must be at least 1')
  model, params, dataset = load_ensemble(workdirs)
  sampled = evaluation.SampledEvaluator(model, dataset.test)
  evaluation.check_top_k(top_k, sampled.num_candidates, sampled.what)
  test = sampled(params, top_k)
  full = evaluation.full_ranking_evaluator(model, dataset)(params, top_k)
  return dict(members=list(workdirs), top_k=top_k, hr=test['hr'], ndcg=test['ndcg'],
              full_hr=full['hr'], full_ndcg=full['ndcg'])


def main(argv):
  del argv
  print(json.dumps(evaluate_ensemble(flags.FLAGS.workdir, flags.FLAGS.top_k)))


def define_flags() -> None:
  """Defined only when run, so library users' own flags never collide with these."""
  flags.DEFINE_multi_string('workdir', [], 'A trained run (repeat the flag for each member).')
  flags.DEFINE_integer('top_k', 10, 'Cut-off of HR and NDCG.')


if __name__ == '__main__':
  cli.run(main, define_flags)
