"""A configuration's leaf fields by dotted name (`synthetic.num_users`), for a ConfigDict or
the plain dict config.json holds."""

from typing import Any, Mapping

import ml_collections


def flat_fields(tree: Mapping | ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  """{dotted name: value} of every leaf field of `tree`."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out
