"""The house drawn from its imports: every `ncf_jax` import (at the top of a module or inside
a function) goes to a lower layer or within one, and no module reaches itself again.

A new module gets a place in LAYERS; an import that needs a module above its own is a
sign that something belongs lower (or in a module of its own)."""

import ast
import os

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, 'ncf_jax')

# Lowest first. Within a layer, imports may go either way (the cycle check still holds).
# `package.*` stands for every module of a package (a new model's file needs no line here).
LAYERS = [
    ('errors', 'configs', 'config_fields', 'data.spec', 'data.interactions', 'interrupts',
     'counter_random', 'summaries', 'statistics',
     'tables',  # one TableSpec per embedding table: read by models, sharding, optimizers, ...
     'row_init',  # a table's initial rows by global row index (any mesh, no whole temporaries)
     'ials', 'ease',  # the fitted baselines' solvers (plain jax.numpy)
     'kept_programs'),  # programs kept for the next run of equal settings
    ('data.files',),
    ('data.delimited', 'data.ncf_format', 'data.dataset', 'data.id_maps', 'data.prepare',
     'data.download', 'data.synthetic', 'data.registry'),
    ('help_text', 'launch'),  # --help's text; a run of several processes (JAX only inside)
    ('cli',),  # what every command shares: no JAX, no Orbax (the data tools use it)
    ('data.__main__',),
    ('sharding', 'epoch', 'dot_product'),  # epoch: the training examples' definition
    ('models', 'models.*', 'als_fit'),  # a model per file; als_fit: iALS / EASE fitted
    ('optimizers',),
    ('train_step', 'batch_source', 'checkpoints', 'shard_digests', 'config_checks'),
    ('run_settings',),  # the one reading of a config: plain settings for everything below
    ('row_sharded',),  # the step and lookups of row-sharded tables under shard_map
    ('evaluation',),  # its full ranking uses the routed lookup of row_sharded
    ('run_dir',),  # the run folder's files
    ('trained_run', 'provenance'),  # reading a finished run (no optimizer); what it trained on
    ('pretrain',),
    ('train',),
    ('workdir_flags',),
    ('main', 'pipeline', 'recommend', 'ensemble', 'benchmark', 'benchmark_input', 'export',
     'communication'),
]


def _modules() -> dict[str, str]:
  """{name relative to ncf_jax: path} of every module of the package."""
  out = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, '.')
        module = module.removesuffix('__init__').rstrip('.')
        if module:  # the package's own __init__ imports nothing
          out[module] = path
  return out


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
  """{module: the ncf_jax modules it imports}, read from the source (nothing is imported)."""
  graph = {}
  for module, path in modules.items():
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f'{node.module}.{alias.name}' for alias in node.names] + [node.module]
      else:
        continue
      for name in names:
        if name == 'ncf_jax' or not name.startswith('ncf_jax.'):
          continue
        name = name[len('ncf_jax.'):]
        if name.split('.')[0] == 'configs':
          targets.add('configs')
        elif name in modules:
          targets.add(name)
        elif name.rsplit('.', 1)[0] in modules:  # `from ncf_jax.x import a_name`
          targets.add(name.rsplit('.', 1)[0])
    graph[module] = targets - {module}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A list of modules that import each other round, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 'open':
        return stack[stack.index(target):] + [target]
      if target not in state:
        found = visit(target)
        if found:
          return found
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def _levels(modules, layers) -> dict[str, int]:
  """{module: its layer's index}, a `package.*` entry standing for the package's modules."""
  level = {}
  for i, layer in enumerate(layers):
    for entry in layer:
      if entry.endswith('.*'):
        level.update({m: i for m in modules if m.startswith(entry[:-1])})
      else:
        level[entry] = i
  return level


def upward_imports(graph: dict[str, set[str]], layers) -> list[str]:
  level = _levels(graph, layers)
  return sorted(f'{module} -> {target}' for module, targets in graph.items()
                for target in targets if level[target] > level[module])


def test_every_module_has_a_layer():
  modules = set(_modules())
  assert sorted(modules - set(_levels(modules, LAYERS))) == []
  declared = {e for layer in LAYERS for e in layer if not e.endswith('.*')} - {'configs'}
  assert sorted(declared - modules) == []
  assert all(any(m.startswith(e[:-1]) for m in modules)
             for layer in LAYERS for e in layer if e.endswith('.*'))


def test_no_import_runs_back_up_and_none_goes_round():
  graph = import_graph(_modules())
  assert upward_imports(graph, LAYERS) == []
  assert find_cycle(graph) is None


def test_the_checks_see_an_arrow_up_and_a_circle():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': set()}
  assert upward_imports(graph, [('c',), ('b',), ('a',)]) == []
  assert upward_imports(graph, [('b',), ('c',), ('a',)]) == ['b -> c']
  assert find_cycle(graph) is None
  graph['c'] = {'a'}
  assert find_cycle(graph) == ['a', 'b', 'c', 'a']


def test_the_graph_is_read_from_imports_anywhere_in_a_module(tmp_path):
  (tmp_path / 'low.py').write_text('X = 1\n')
  (tmp_path / 'high.py').write_text(
      'def f():\n  from ncf_jax import low  # a lazy import counts\n  return low\n')
  (tmp_path / 'other.py').write_text('from ncf_jax.high import f\nimport ncf_jax.low\n')
  graph = import_graph({name: str(tmp_path / f'{name}.py') for name in ('low', 'high', 'other')})
  assert graph == {'low': set(), 'high': {'low'}, 'other': {'high', 'low'}}


def _top_level_imports(path: str) -> set[str]:
  """Absolute names a module imports when it is itself imported (not inside functions)."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  names = set()
  for node in tree.body:
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names |= {node.module} | {f'{node.module}.{alias.name}' for alias in node.names}
  return names


@pytest.mark.parametrize('module', ['cli', 'data.__main__'])
def test_the_data_tools_and_cli_start_without_jax(module):
  # `python -m ncf_jax.data` starts without JAX or Orbax: what it imports on the way in
  # imports none of them (a training command's function may, when it runs).
  modules = _modules()
  reached, todo = set(), [module]
  while todo:
    current = todo.pop()
    if current in reached or current not in modules:
      continue
    reached.add(current)
    for name in _top_level_imports(modules[current]):
      assert name.split('.')[0] not in {'jax', 'flax', 'orbax', 'optax'}, (current, name)
      if name.startswith('ncf_jax.'):
        todo.append(name[len('ncf_jax.'):])
        todo.append(name[len('ncf_jax.'):].rsplit('.', 1)[0])
  assert module in reached
