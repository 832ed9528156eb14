"""`--help` of every entry point: its usage, its flags, and (for commands that take
`--config`) every config field with its default and a one-line meaning; exit code 0.

The meanings come from the comments in `configs/default.py` (and in the config file
given with `--config=`, for fields of its own); FALLBACK holds those of fields the file
leaves uncommented. A test checks that every field has one.
"""

import importlib.util
import os
import re
import sys
import textwrap

from absl import flags

HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull')

# Meanings of fields configs/default.py has no comment for.
FALLBACK = {
    'num_epochs': 'epochs to train; a larger value continues the same run',
    'batch_size': 'training examples (positives and negatives) per optimizer step',
    'num_negatives': 'negatives drawn per training positive',
    'learning_rate': 'step size of the optimizer',
    'adam_b1': "Adam's decay of the first moment (beta1)",
    'adam_b2': "Adam's decay of the second moment (beta2)",
    'adam_eps': "Adam's epsilon",
    'seed': 'seed of initialisation, negative sampling and the validation holdout',
    'top_k': 'K of HR@K and NDCG@K',
    'eval_users_per_block': 'users scored per compiled evaluation call (memory against speed)',
    'synthetic': 'the generated dataset of dataset=synthetic',
    'synthetic.num_users': 'synthetic data: users',
    'synthetic.num_items': 'synthetic data: items',
    'synthetic.interactions_per_user': 'synthetic data: interactions of each user',
    'synthetic.num_clusters': 'synthetic data: taste clusters (the planted structure)',
    'synthetic.popularity_exponent': 'synthetic data: Zipf exponent of item popularity',
    'synthetic.num_test_negatives': 'synthetic data: sampled negatives per test item',
    'synthetic.seed': "the data's own seed: runs of other `seed`s train on the same data",
    'gmf_workdir': 'a trained GMF run whose best checkpoint initialises the GMF tower',
    'mlp_workdir': 'a trained MLP run whose best checkpoint initialises the MLP tower',
    'alpha': 'weight of the GMF head in the merged NeuMF head (1 - alpha: the MLP head)',
}
_SECTION = re.compile(r'^[A-Z][A-Za-z ]*\.$')  # "# Data." above a group of fields
_ASSIGN = re.compile(r'^(?:c|config)\.([A-Za-z_][\w.]*)\s*=(.*)$')


def _trailing_comment(code: str) -> str:
  """The `# ...` comment ending a line of code (outside quotes)."""
  quote = None
  for i, char in enumerate(code):
    if quote:
      quote = None if char == quote else quote
    elif char in '\'"':
      quote = char
    elif char == '#':
      return code[i + 1:].strip()
  return ''


def field_comments(path: str) -> dict[str, str]:
  """{field: its comment} of the `c.field = ...` lines of a config file: the comment on
  the line, else the comment lines just above it."""
  docs, above = {}, []
  with open(path, encoding='utf-8') as f:
    for line in f:
      stripped = line.strip()
      if stripped.startswith('#'):
        text = stripped.lstrip('#').strip()
        if not _SECTION.match(text):
          above.append(text)
        continue
      match = _ASSIGN.match(stripped)
      if match:
        doc = _trailing_comment(match.group(2)) or ' '.join(above)
        if doc:
          docs.setdefault(match.group(1), doc)
      above = []
  return docs


def _load(path: str):
  spec = importlib.util.spec_from_file_location('_ncf_help_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _flat(tree: dict, prefix: str = '') -> list[tuple[str, object]]:
  out = []
  for key, value in tree.items():
    if isinstance(value, dict):
      out += _flat(value, f'{prefix}{key}.')
    else:
      out.append((prefix + key, value))
  return out


def config_fields(config_path: str | None = None) -> list[tuple[str, object, str]]:
  """[(dotted field, default, meaning)] of configs/default.py, or of `config_path`'s config
  (its own values, and its own fields' comments)."""
  from ncf_jax import configs  # pylint: disable=g-import-not-at-top
  default_path = os.path.join(os.path.dirname(configs.__file__), 'default.py')
  docs = dict(FALLBACK)
  docs.update(field_comments(default_path))
  path = config_path or default_path
  if path != default_path:
    docs.update({k: v for k, v in field_comments(path).items() if k not in docs})
  config = _load(path)
  tree = config.to_dict()
  return [(name, value, docs.get(name, '')) for name, value in _flat(tree)]


def config_section(config_path: str | None = None) -> str:
  """The help text's config fields, one `--config.field=default  meaning` entry each."""
  try:
    fields = config_fields(config_path)
    source = config_path or 'configs/default.py'
  except Exception as e:  # pylint: disable=broad-except
    return f'config fields: cannot read {config_path} ({type(e).__name__}: {e})\n'
  lines = [f'config fields (--config.FIELD=VALUE; defaults of {source}):']
  for name, value, meaning in fields:
    shown = '' if value is None else (
        '"(' + ','.join(map(str, value)) + (',' if len(value) == 1 else '') + ')"'
        if isinstance(value, tuple) else str(value))
    lines.append(f'  --config.{name}={shown}')
    if meaning:
      lines += textwrap.wrap(meaning, 92, initial_indent='      ', subsequent_indent='      ')
  return '\n'.join(lines) + '\n'


def _config_arg(argv: list[str]) -> str | None:
  from ncf_jax import cli  # pylint: disable=g-import-not-at-top
  for arg in argv[1:]:
    for prefix in ('--config=', '-config='):
      if arg.startswith(prefix):
        return cli.shipped_config(arg[len(prefix):].split(':')[0])
  return None


def usage(main_module_doc: str | None, argv: list[str]) -> str:
  """Usage (the entry point's docstring), its flags (absl's listing, without absl's own),
  and the config fields when the command takes --config."""
  parts = [(main_module_doc or '').strip() + '\n']
  values = flags.FLAGS
  ours = [module for module, module_flags in sorted(values.flags_by_module_dict().items())
          if module_flags and (module.split('.')[0] in ('ncf_jax', 'experiments')
                               or module.endswith('.py'))]  # the entry point's own file
  if ours:
    parts.append('flags:\n' + '\n'.join(values.module_help(m) for m in ours))
  parts.append("(--helpfull also lists the flags of absl and the libraries, e.g. --verbosity.)\n")
  if 'config' in values:
    parts.append(config_section(_config_arg(argv)))
  return '\n'.join(p for p in parts if p)


def exit_if_help_requested(argv: list[str], main_module_doc: str | None) -> None:
  """Prints the help and exits 0 when argv asks for it (absl's own --help exits 1)."""
  asked = [a for a in argv[1:] if a.split('=')[0] in HELP_FLAGS]
  if not asked:
    return
  if asked[0].startswith('--helpfull'):
    sys.stdout.write(flags.FLAGS.get_help() + '\n')
  sys.stdout.write(usage(main_module_doc, argv))
  sys.stdout.flush()
  sys.exit(0)
