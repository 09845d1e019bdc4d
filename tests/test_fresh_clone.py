"""A fresh clone beside the shared folder runs the README's commands as written.

The clone holds only what is committed (no links out of it, no machine paths); its
`../shared` is the shared folder, as on a new machine.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_main import ROOT
from train import data

README = Path(ROOT) / 'README.md'


def readme_command(pattern: str) -> list[str]:
  """The README's first `python main.py ...` line matching `pattern`, as arguments."""
  for line in README.read_text().splitlines():
    if line.startswith('python main.py') and re.search(pattern, line):
      return line.split('#')[0].split()[2:]
  raise AssertionError(f'README has no command matching {pattern!r}')


@pytest.fixture(scope='module')
def clone(tmp_path_factory) -> Path:
  base = tmp_path_factory.mktemp('fresh')
  repo = base / 'repo'
  if (Path(ROOT) / '.git').exists():
    subprocess.run(['git', 'clone', '--quiet', ROOT, str(repo)], check=True, timeout=120)
  else:  # A checkout without history: its files as they are.
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        '.venv', '.git', 'runs', '__pycache__', '.pytest_cache', '.hypothesis'))
  if data.shared_dir().exists():
    (base / 'shared').symlink_to(data.shared_dir().resolve())
  return repo


def run(repo: Path, args: list[str]) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != data.SHARED_DIR_ENV}
  result = subprocess.run([sys.executable, 'main.py', *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, (args, result.stderr[-3000:])
  return result


def test_clone_has_no_link_leaving_it(clone):
  for path in clone.rglob('*'):
    if path.is_symlink():
      assert path.resolve().is_relative_to(clone.resolve()), path


def test_readme_quickstart_as_written(clone, tmp_path):
  """The set-up section's command reaches its documented top-1 (its workdir moved to a
  fresh folder: a finished run in /tmp would not train again)."""
  args = [a if not a.startswith('--workdir=') else f'--workdir={tmp_path / "q"}'
          for a in readme_command(r'configs/quickstart\.py')]
  result = run(clone, args)
  summary = json.loads((tmp_path / 'q' / 'summary.json').read_text())
  assert summary['top1'] >= 0.95, summary
  assert 'img/s' in result.stderr and 'ETA' in result.stderr
  assert len([c for c in os.listdir(tmp_path / 'q' / 'checkpoints') if c.isdigit()]) >= 2


@pytest.mark.skipif(not (data.shared_dir() / 'data' / 'cifar10-jpeg.tar.gz').exists(),
                    reason='the shared CIFAR-10 archive is absent')
def test_readme_runs_commands_in_the_clone(clone, tmp_path):
  """`--workdir=runs/...` commands of the README: runs/ is made on demand, the config's
  `../shared` archive is found from the clone, and eval reads the workdir back."""
  train = readme_command(r'configs/resnet20_cpu\.py --workdir=runs/resnet20_cpu$')
  workdir = 'runs/resnet20_cpu'
  run(clone, [*train, '--config.num_train_steps=2', '--config.log_every_steps=1',
              f'--config.data.cache_dir={tmp_path}'])
  assert (clone / workdir / 'summary.json').exists()
  run(clone, readme_command(r'--workdir=runs/resnet20_cpu --mode=eval'))
  evaluated = json.loads((clone / workdir / 'eval.json').read_text())
  assert evaluated['top1'] == json.loads((clone / workdir / 'summary.json').read_text())[
      'top1']
