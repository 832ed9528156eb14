"""Test-wide settings: rank promotion is an error, so (B,1) vs (B,) mistakes fail loudly."""

import os
import sys

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')
# `configs` is a top-level folder of the repository, imported as a package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
