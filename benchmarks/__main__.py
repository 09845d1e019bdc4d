"""Runs the benchmarks side by side in one process and writes benchmarks/latest.json.

  python -m benchmarks                          # all, full sizes (est. 6-8 min, 2 cores)
  python -m benchmarks --only=vgg_conv,mask_compute
  python -m benchmarks --smoke                  # tiny sizes: checks the scripts run

Never run it next to another CPU job: the ratios are only comparable when nothing
else competes for the cores. Each benchmark's table is logged as it finishes; the full
table goes to stdout at the end. An entry passes when its ratio is at or below its
target (entries without a target are reported, not judged). A full run of all
benchmarks writes benchmarks/latest.json; `--smoke` or `--only` write only to `--out`.
"""

import json
import os
import sys

from absl import app, flags, logging

from benchmarks import suite

_SMOKE = flags.DEFINE_bool('smoke', False, 'Tiny sizes, for tests.')
_ONLY = flags.DEFINE_list('only', [], f'Benchmarks to run (default all): '
                          f'{", ".join(suite.NAMES)}.')
_OUT = flags.DEFINE_string('out', None, 'Where to write the results (default: '
                           'benchmarks/latest.json for a full run of all of them).')
LATEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'latest.json')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # Warnings only; --verbosity=0 for INFO.
    logging.set_verbosity(logging.WARNING)
  try:
    names = suite.select(_ONLY.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  result = suite.run(names, _SMOKE.value,
                     log=lambda text: print(text, file=sys.stderr, flush=True))
  print(suite.table(result['entries']))
  print(f'total {result["wall_seconds"]["total"]:.0f} s on {result["machine"]["cpu"]} '
        f'({result["machine"]["devices"]} {result["machine"]["platform"]} device(s))')
  out = _OUT.value or (LATEST if not _SMOKE.value and len(names) == len(suite.NAMES)
                       else None)
  if out:
    with open(out, 'w') as f:
      json.dump(result, f, indent=2)
      f.write('\n')
    print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
