"""The experiment runner: plans, runs, resumes, and writes its tables (smoke run on synthetic)."""

import json
import os
import subprocess
import sys

from experiments import reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mlp_layers_halve_down_to_the_factors():
  assert reproduce.mlp_layers(0, 8) == (8,)
  assert reproduce.mlp_layers(3, 8) == (64, 32, 16, 8)
  assert reproduce.mlp_layers(4, 16) == (256, 128, 64, 32, 16)


def test_table2_smoke_run_writes_results_and_resumes(tmp_path):
  command = [sys.executable, '-m', 'experiments.reproduce', '--experiment=table2', '--factors=8',
             '--num_epochs=1', '--dataset=synthetic', f'--runs_dir={tmp_path / "runs"}',
             f'--results_dir={tmp_path / "results"}']
  first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-2000:]
  summary = json.loads((tmp_path / 'results' / 'summary.json').read_text())
  rows = summary['table2']
  assert [(r['factors'], r['pretrained']) for r in rows] == [(8, False), (8, True)]
  assert all(0 < r['hr'] <= 1 and r['paper_hr'] == reproduce.PAPER_TABLE2[(8, r['pretrained'])][0]
             for r in rows)
  assert 'neumf-8' in (tmp_path / 'results' / 'table2.md').read_text()
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0
  assert again.stdout.count('finished earlier') == 4  # neumf, and the pipeline's three stages
