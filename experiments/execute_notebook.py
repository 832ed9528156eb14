"""Runs experiments/quickstart.ipynb top to bottom in a fresh kernel and saves its outputs.

  pip install nbclient ipykernel             # tools for this script, not ncf-jax dependencies
  python -m experiments.execute_notebook     # from the repository root

The saved outputs are what GitHub shows and what tests/test_notebook.py checks for, so they
come from the default path: refused while NCF_DATA_DIR or RUN_ML1M is set (the MovieLens cell
must print its skip line). `--output=PATH` writes the executed copy elsewhere and allows them,
to try the MovieLens cell without touching the saved notebook. Per-run metadata (cell timings)
is left out, so a rerun changes only what the notebook printed and drew.
"""

import argparse
import os
import sys

import nbclient
import nbformat

from experiments import notebook_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'experiments', 'quickstart.ipynb')


def merge_streams(outputs: list) -> list:
  """Consecutive stdout (or stderr) outputs as one, as a notebook front end shows them."""
  merged = []
  for output in outputs:
    if (output.output_type == 'stream' and merged and merged[-1].output_type == 'stream'
        and merged[-1].name == output.name):
      merged[-1].text += output.text
    else:
      merged.append(output)
  return merged


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', help='write the executed notebook here (default: in place)')
  args = parser.parse_args()
  if args.output is None:
    for name in ('NCF_DATA_DIR', 'RUN_ML1M'):
      if os.environ.get(name):
        sys.exit(f'error: {name} is set; the saved notebook shows the run without it '
                 '(unset it, or pass --output=PATH)')
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # The kernel starts in the repository root, so a checkout's own ncf_jax is the one imported.
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name='python3',
                                   record_timing=False, resources={'metadata': {'path': ROOT}})
  client.execute()
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      cell.outputs = merge_streams(cell.outputs)
  # What produced these outputs: tests/test_notebook.py fails once the code moves on.
  notebook.metadata[notebook_digest.KEY] = {'outputs_digest': notebook_digest.outputs_digest(
      notebook)}
  nbformat.write(notebook, args.output or NOTEBOOK)


if __name__ == '__main__':
  main()
