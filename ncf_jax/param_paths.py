"""Names for places in a parameter tree, shared by the models, the optimizers and sharding."""

from typing import Literal

ParamPath = tuple[str, ...]  # the keys from a params tree's root to one array
IdsKey = Literal['users', 'items']  # which batch ids index an embedding table
