"""Model shapes, parameter names, and the identities the NCF paper states."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncf_jax.configs import default
from ncf_jax import config_checks
from ncf_jax import models
from ncf_jax import run_settings
from ncf_jax.errors import ConfigError


def _init(model, seed=0):
  ids = jnp.zeros((3,), jnp.int32)
  return model.init(jax.random.key(seed), ids, ids)['params']


def _shapes(params):
  return {'/'.join(k): v.shape for k, v in flax.traverse_util.flatten_dict(params).items()}


def test_parameter_trees_line_up_for_pretraining():
  gmf = _shapes(_init(models.GMF(50, 40, num_factors=8)))
  mlp = _shapes(_init(models.MLP(50, 40, num_factors=8, layers=(64, 32, 16, 8))))
  neumf = _shapes(_init(models.NeuMF(50, 40, num_factors=8, layers=(64, 32, 16, 8))))
  assert gmf == {'gmf/user_embedding': (50, 8), 'gmf/item_embedding': (40, 8),
                 'head/kernel': (8, 1), 'head/bias': (1,)}
  assert mlp == {'mlp/user_embedding': (50, 32), 'mlp/item_embedding': (40, 32),
                 'mlp/layer_0/kernel': (64, 32), 'mlp/layer_0/bias': (32,),
                 'mlp/layer_1/kernel': (32, 16), 'mlp/layer_1/bias': (16,),
                 'mlp/layer_2/kernel': (16, 8), 'mlp/layer_2/bias': (8,),
                 'head/kernel': (8, 1), 'head/bias': (1,)}
  # NeuMF holds both towers unchanged and a head over [h_gmf; h_mlp].
  for name, shape in {**gmf, **mlp}.items():
    if not name.startswith('head'):
      assert neumf[name] == shape
  assert neumf['head/kernel'] == (16, 1)


def test_neumf_logits_are_the_papers_formula_computed_in_numpy():
  # He et al. eq. 12: y = h^T [p_u^G * q_i^G ; ReLU tower(p_u^M ; q_i^M)] + b, one logit
  # per example.
  model = models.NeuMF(10, 12, num_factors=4, layers=(16, 8, 4))
  params = jax.tree_util.tree_map(lambda x: x * 3 + 0.05, _init(model, seed=2))
  users, items = np.array([0, 3, 9, 9, 5]), np.array([11, 0, 4, 7, 7])
  p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
  gmf = p['gmf']['user_embedding'][users] * p['gmf']['item_embedding'][items]
  x = np.concatenate([p['mlp']['user_embedding'][users], p['mlp']['item_embedding'][items]], 1)
  for j in range(2):
    layer = p['mlp'][f'layer_{j}']
    x = np.maximum(x @ layer['kernel'] + layer['bias'], 0.0)
  expected = np.concatenate([gmf, x], 1) @ p['head']['kernel'][:, 0] + p['head']['bias'][0]
  logits = model.apply({'params': params}, jnp.asarray(users), jnp.asarray(items))
  assert logits.shape == (5,)
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_gmf_with_unit_head_is_the_mf_dot_product():
  model = models.GMF(7, 9, num_factors=4)
  params = _init(model, seed=1)
  params = jax.tree_util.tree_map(lambda x: x * 50, params)
  params['head'] = {'kernel': jnp.ones((4, 1)), 'bias': jnp.zeros((1,))}
  users, items = jnp.array([0, 3, 6, 6]), jnp.array([8, 0, 2, 5])
  logits = model.apply({'params': params}, users, items)
  p = params['gmf']
  expected = jnp.sum(p['user_embedding'][users] * p['item_embedding'][items], axis=-1)
  np.testing.assert_allclose(logits, expected, rtol=1e-6)


def test_initialisation_follows_the_original_code():
  params = _init(models.NeuMF(3000, 3000, num_factors=16, layers=(64, 32, 16)))
  emb = np.asarray(params['gmf']['user_embedding'])
  assert abs(emb.std() - 0.01) < 0.001 and abs(emb.mean()) < 0.001
  assert not np.asarray(params['mlp']['layer_0']['bias']).any()


@pytest.mark.parametrize('cls,layers', [(models.NeuMF, (16, 8, 4)), (models.GMF, (16, 8)),
                                        (models.MLP, (16,)), (models.MLP, (16, 8, 4)),
                                        (models.MF, None)])
def test_score_matrix_equals_pairwise_scores(cls, layers):
  model = cls(10, 7, num_factors=4, **({} if layers is None else dict(layers=layers)))
  params = jax.tree_util.tree_map(lambda x: x * 30 if x.ndim == 2 else x + 0.1, _init(model))
  users, items = jnp.array([1, 3, 5]), jnp.arange(7)
  matrix = model.apply({'params': params}, users, items, method=model.score_matrix)
  uu, ii = jnp.meshgrid(users, items, indexing='ij')
  pairwise = model.apply({'params': params}, uu.ravel(), ii.ravel()).reshape(3, 7)
  np.testing.assert_allclose(matrix, pairwise, rtol=1e-4, atol=1e-4)


def test_layers_follow_num_factors_unless_given():
  def layers(**overrides):
    config = default.get_config()
    config.update(overrides)
    config_checks.validate(config)
    return models.create_model(run_settings.model_settings(config), 5, 5).layers

  assert layers(num_factors=8) == (64, 32, 16, 8)
  assert layers(num_factors=32) == (256, 128, 64, 32)
  assert layers(num_factors=8, layers=(32, 16)) == (32, 16)
  with pytest.raises(ConfigError, match='layers'):
    layers(layers=(33, 16))


def test_unknown_model_is_a_config_error():
  config = default.get_config()
  config.model = 'transformer'
  with pytest.raises(ConfigError, match="config.model: unknown model 'transformer'"):
    config_checks.validate(config)


@pytest.mark.parametrize('name', list(models.MODELS))
def test_every_model_satisfies_the_contract(name):
  # The tables the model names are exactly its per-user and per-item parameters, indexed by
  # the ids `embed` uses; hidden kernels are real kernels; score(embed) is __call__;
  # score_matrix agrees with it (checked above); pair_width bounds the widest activation per
  # (user, item) pair that score_matrix's program holds (read from its jaxpr).
  config = default.get_config()
  config.model, config.num_factors = name, 4
  model = models.create_model(run_settings.model_settings(config), 11, 7)
  params = flax.traverse_util.flatten_dict(_init(model))
  tables = model.embedding_tables()
  assert tables
  for path, ids in tables.items():
    assert params[path].shape[0] == {'users': 11, 'items': 7}[ids]
  others = [p for p in params if p not in tables]
  assert all(params[p].ndim < 2 or params[p].shape[0] not in (11, 7) for p in others)
  for path in model.hidden_kernels():
    assert path[-1] == 'kernel' and params[path].ndim == 2
  users, items = jnp.array([0, 10, 3]), jnp.array([6, 0, 2])
  variables = {'params': _init(model)}
  rows = model.apply(variables, users, items, method=model.embed)
  assert set(flax.traverse_util.flatten_dict(rows)) == set(tables)
  np.testing.assert_allclose(model.apply(variables, rows, method=model.score),
                             model.apply(variables, users, items), rtol=1e-6)
  num_u, num_i = 3, 5  # sizes no parameter has
  jaxpr = jax.make_jaxpr(lambda u, i: model.apply(variables, u, i, method=model.score_matrix))(
      jnp.arange(num_u), jnp.arange(num_i))
  widths = [int(np.prod(v.aval.shape[2:])) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars
            if v.aval.shape[:2] == (num_u, num_i)]
  assert widths and max(widths) <= model.pair_width


def test_mf_is_a_biased_dot_product():
  model = models.MF(6, 5, num_factors=3)
  params = jax.tree_util.tree_map(lambda x: x * 40 + 0.2, _init(model))
  users, items = jnp.array([0, 5, 2]), jnp.array([4, 4, 1])
  p = params['mf']
  expected = (jnp.sum(p['user_embedding'][users] * p['item_embedding'][items], axis=-1)
              + p['user_bias'][users, 0] + p['item_bias'][items, 0] + params['bias'])
  np.testing.assert_allclose(model.apply({'params': params}, users, items), expected, rtol=1e-6)
