"""Every benchmark runs at tiny sizes and reports ratios (no timing is asserted)."""

import json
import subprocess
import sys

from tests.test_main import ROOT


def test_benchmarks_smoke(tmp_path):
  out = tmp_path / 'latest.json'
  result = subprocess.run([sys.executable, '-m', 'benchmarks', '--smoke', f'--out={out}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  entries = json.load(open(out))['entries']
  names = {e['name'].split('/')[0] for e in entries}
  assert names == {'train_step', 'packed_forward'}
  assert all(e['ratio'] > 0 for e in entries)
  assert 'train_step/resnet8/b8/cci_dynamic' in result.stdout
