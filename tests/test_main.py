"""The command line: locked configs, and the quickstart end to end."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_misspelled_config_key_stops_with_its_name(tmp_path):
  result = run_main('--config=configs/quickstart.py', f'--workdir={tmp_path}',
                    '--config.optimizer.learning_rat=0.1')
  assert result.returncode != 0
  assert 'learning_rat' in result.stderr and 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')
