"""Runs every benchmark and writes benchmarks/latest.json.

  python -m benchmarks            # full sizes (several minutes on 2 CPU cores)
  python -m benchmarks --smoke    # tiny sizes: checks the scripts run

An entry passes when its ratio is at or below its target (entries without a target
are reported, not judged).
"""

import json
import os

from absl import app, flags

from benchmarks import packed_forward, train_step
from train import timing

_SMOKE = flags.DEFINE_bool('smoke', False, 'Tiny sizes, for tests.')
_OUT = flags.DEFINE_string('out', os.path.join(os.path.dirname(__file__), 'latest.json'),
                           'Where to write the results.')


def run(smoke: bool) -> dict:
  repeats = 2 if smoke else 10
  entries = [*train_step.measure('resnet8' if smoke else 'resnet20', 8 if smoke else 64,
                                 repeats),
             *packed_forward.measure('resnet8' if smoke else 'resnet20',
                                     [1, 8] if smoke else [1, 128], repeats)]
  for e in entries:
    e['passed'] = None if e['target'] is None else e['ratio'] <= e['target']
  return {'entries': entries, 'machine': timing.machine(), 'smoke': smoke}


def main(argv):
  del argv
  result = run(_SMOKE.value)
  print(f'{"benchmark":<45}{"seconds":>10}{"ratio":>8}{"target":>8}  pass')
  for e in result['entries']:
    print(f'{e["name"]:<45}{e["seconds"]:>10.4f}{e["ratio"]:>8.3f}'
          f'{e["target"] or "-":>8}  {e["passed"]}')
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)
    f.write('\n')


if __name__ == '__main__':
  app.run(main)
