"""The registered benchmarks, running a selection of them and the printed table."""

import importlib
import importlib.util
import time
from typing import Any

from benchmarks import common
from train import provenance

# Name -> module under benchmarks/ with `measure(smoke: bool) -> list[entry]`, in the
# order they run. Full sizes: an estimated 6-8 minutes in all on 2 CPU cores; each
# run records its wall time per benchmark (`wall_seconds`).
NAMES = ('train_step', 'mask_compute', 'input_pipeline', 'imagenet_pipeline',
         'compact_forward', 'packed_forward', 'flax_reference', 'vgg_conv',
         'pytorch_reference', 'onnx_runtime')


def select(only: list[str] | None) -> list[str]:
  """The names to run, in registry order; all for None or an empty list."""
  unknown = sorted(set(only or ()) - set(NAMES))
  if unknown:
    raise ValueError(f'Unknown benchmark(s) {", ".join(unknown)}; known: '
                     f'{", ".join(NAMES)}.')
  return [n for n in NAMES if not only or n in only]


def missing(name: str) -> list[str]:
  """The optional modules benchmark `name` needs (its `REQUIRES`) that are not installed."""
  required = getattr(importlib.import_module(f'benchmarks.{name}'), 'REQUIRES', ())
  return [m for m in required if importlib.util.find_spec(m) is None]


def measure(name: str, smoke: bool) -> list[common.Entry]:
  """The entries of benchmark `name`, each with `passed` (None without a target)."""
  entries = importlib.import_module(f'benchmarks.{name}').measure(smoke)
  for e in entries:  # No ratio: the baseline could not run (e.g. not installed).
    e['passed'] = (None if e['target'] is None or e['ratio'] is None
                   else bool(e['ratio'] <= e['target']))
  return entries


def run(names: list[str], smoke: bool, log: Any = None) -> dict[str, Any]:
  """Runs `names` in one process; entries, wall seconds per benchmark, the machine.

  A benchmark whose optional modules are missing is skipped (`skipped` says why).
  """
  entries, wall, skipped = [], {}, {}
  start = time.perf_counter()
  for name in names:
    absent = missing(name)
    if absent:
      skipped[name] = f'needs {", ".join(absent)}: pip install -r requirements-export.txt'
      if log:
        log(f'skipped {name}: {skipped[name]}')
      continue
    begin = time.perf_counter()
    new = measure(name, smoke)
    wall[name] = time.perf_counter() - begin
    entries += new
    if log:
      log(table(new) + f'\n  ({name}: {wall[name]:.0f} s)')
  wall['total'] = time.perf_counter() - start
  return {'entries': entries, 'wall_seconds': wall, 'machine': provenance.machine(),
          'smoke': smoke, 'skipped': skipped}


def _number(value: float | None, digits: int) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def table(entries: list[common.Entry]) -> str:
  """One line per entry: name, seconds, baseline seconds, ratio, target, pass."""
  width = max([len(e['name']) for e in entries] + [9]) + 2
  lines = [f'{"benchmark":<{width}}{"seconds":>10}{"baseline":>10}{"ratio":>8}'
           f'{"target":>8}  pass']
  for e in entries:
    passed = {None: '-', True: 'yes', False: 'NO'}[e.get('passed')]
    lines.append(f'{e["name"]:<{width}}{e["seconds"]:>10.4f}'
                 f'{_number(e["baseline_seconds"], 4):>10}{_number(e["ratio"], 3):>8}'
                 f'{_number(e["target"], 3):>8}  {passed}'
                 + ('' if e['ratio'] is not None else f'  ({e["baseline"]})'))
  return '\n'.join(lines)
