"""ncf-jax: Neural Collaborative Filtering (He et al., WWW 2017) in JAX and Flax."""

__version__ = '0.1.0'
