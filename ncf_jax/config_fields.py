"""A configuration's fields: by dotted name (`synthetic.num_users`), and which of them change
what a run computes (`computing_fields`, the one answer read by the run's identity, its resume
checks, its default folder and its provenance record)."""

from typing import Any, Mapping

# config.json's record of the data a run read (ncf_jax/provenance.py checks it): not a field.
PROVENANCE = 'provenance'
# Fields that do not change what a run computes: a run may be resumed or extended with
# other values of them. `target_hr`, like `num_epochs`, decides only when training stops
# (epoch k computes the same with any target), so raising it continues a run; `sampler`
# picks which executor computes the same batches.
NON_COMPUTING_FIELDS = ('num_epochs', 'log_every_seconds', 'steps_per_dispatch',
                        'eval_users_per_block', 'num_devices', 'target_hr', 'sampler')


def flat_fields(tree: Mapping, prefix: str = '') -> dict[str, Any]:
  """{dotted name: value} of every leaf of a nested mapping (`ConfigDict.to_dict()`, or the
  plain dict config.json holds)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def computing_fields(config: dict) -> dict:
  """The fields of a configuration (as the plain dict config.json holds) that change what a
  run computes: all but NON_COMPUTING_FIELDS and the provenance record, nested as given."""
  return {k: v for k, v in sorted(config.items())
          if k != PROVENANCE and k not in NON_COMPUTING_FIELDS}


def differing_fields(ours: Mapping, theirs: Mapping) -> list[str]:
  """The dotted fields whose values differ between two nested trees (one missing in the
  other differs), sorted."""
  ours, theirs = flat_fields(ours), flat_fields(theirs)
  return [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
