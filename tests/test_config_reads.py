"""The configuration is read once, where a run is built (`ncf_jax/run_settings.py`), and plain
values go down: no library function takes the config except the few declared here.

Counted from the source (nothing is imported): every function, method or lambda of the
package whose parameters include a config, by name (`config`, `*_config`, `config_dict`) or
by a `ConfigDict` annotation. Not counted: the commands (they parse flags and hand the config
to `train.train_and_evaluate`, the entry), and `run_settings`, the one module that reads a
config's fields. A new function that takes the config fails this test: give it the plain
values it needs (a settings dataclass built in run_settings), or, if it truly needs the whole
configuration, declare it below and say why.

    python -m pytest -q tests/test_config_reads.py   # prints the list on failure
"""

import ast
import os
import re

from conftest import ROOT

PACKAGE = os.path.join(ROOT, 'ncf_jax')

# The commands: flag parsing, --help, the default workdir of --config; each hands its config to
# an entry point. `train.train_and_evaluate(config, workdir)` is the entry (as in flax's examples).
COMMANDS = ('main', 'cli', 'help_text', 'workdir_flags', 'pipeline', 'recommend', 'ensemble',
            'benchmark', 'benchmark_input', 'export', 'communication', 'data.__main__')
READER = 'run_settings'  # the one module that reads a config's fields
ENTRY = 'train.train_and_evaluate'

# The functions that take the whole configuration, each because it is about the configuration
# as a whole: checking it, the fields that change a run (identity, resume checks, provenance),
# writing it into the run folder, and showing it in TensorBoard.
DECLARED = {
    'config_checks.validate',
    'config_fields.computing_fields',
    'run_dir.RunDir.write_config',
    'summaries.RunSummaries.__init__',
}

_CONFIG_NAME = re.compile(r'(^|_)config(_dict)?$')


def _takes_config(arguments: ast.arguments) -> bool:
  every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
           *filter(None, [arguments.vararg, arguments.kwarg])]
  for arg in every:
    annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ''
    if _CONFIG_NAME.search(arg.arg) or 'ConfigDict' in annotation:
      return True
  return False


def _functions(tree: ast.AST, prefix: str):
  """(dotted name, node) of every function, method and lambda under `tree`."""
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, ast.ClassDef):
      yield from _functions(node, f'{prefix}{node.name}.')
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield f'{prefix}{node.name}', node
      yield from _functions(node, f'{prefix}{node.name}.')
    elif isinstance(node, ast.Lambda):
      yield f'{prefix}<lambda line {node.lineno}>', node
      yield from _functions(node, prefix)
    else:
      yield from _functions(node, prefix)


def config_takers(package: str = PACKAGE) -> list[str]:
  """`module.function` of every library function that takes a config (see the module doc)."""
  found = []
  for folder, _, names in os.walk(package):
    for name in sorted(names):
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      module = os.path.relpath(path, package)[:-3].replace(os.sep, '.').removesuffix('.__init__')
      if module.split('.')[0] == 'configs' or module in COMMANDS or module == READER:
        continue
      with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
      for function, node in _functions(tree, f'{module}.'):
        if function != ENTRY and _takes_config(node.args):
          found.append(function)
  return sorted(found)


def test_the_counter_finds_config_parameters(tmp_path):
  """The counter itself: a function, a method, a lambda and an annotated parameter taking a
  config are found; a path to a config file and the excluded modules are not."""
  (tmp_path / 'lib.py').write_text(
      'import ml_collections\n'
      'def by_name(config, n): pass\n'
      'def by_annotation(c: ml_collections.ConfigDict): pass\n'
      'def a_file(config_path, config_file): pass\n'
      'class A:\n'
      '  def method(self, source_config): pass\n'
      'RULES = {"x": lambda config: 1}\n')
  (tmp_path / 'run_settings.py').write_text('def read(config): pass\n')
  (tmp_path / 'main.py').write_text('def main(config): pass\n')
  assert config_takers(str(tmp_path)) == ['lib.<lambda line 7>', 'lib.A.method',
                                          'lib.by_annotation', 'lib.by_name']


def test_only_the_declared_functions_take_the_config():
  found = config_takers()
  assert len(DECLARED) <= 4
  assert found == sorted(DECLARED), (
      f'{len(found)} library functions take a config: ' + ', '.join(found))
