"""Comparison tables: rows as configs plus overrides, and the columns they report.

A table file (`configs/tables/NAME.py`) defines `get_table(preset) -> Table`;
`python -m train.reproduce` runs its rows and writes the results (train/reproduce.py).
"""

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

PRESETS = ('cpu', 'cpu_short', 'paper')


@dataclasses.dataclass(frozen=True)
class Row:
  """One run of a table.

  Attributes:
    name: workdir name; rows of any table with the same name and preset share one
      run, so they must mean the same config (main.py refuses a workdir otherwise).
    label: the row's text in the table.
    method: its marker in the plot ('dense', 'CCI dynamic', 'L1 filter', ...).
    config: a config file with its optional argument, 'configs/x.py:arg'.
    overrides: `--config.KEY=VALUE` pairs.
    start_from: the name of the row whose finished workdir is `config.init_from`.
    seeds: how many seeds (0, 1, ...) this row runs; seed s starts from seed s of
      `start_from` if that row runs it, else from its seed 0 (fine-tune seeds of one
      pre-trained model).
    widths_from_start: train the model of `start_from` (its `widths.json` becomes
      `model.widths`), e.g. CCI on a C2S2-compacted network.
  """
  name: str
  label: str
  method: str
  config: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  start_from: str = ''
  seeds: int = 1
  widths_from_start: bool = False


@dataclasses.dataclass(frozen=True)
class Column:
  """A table column: its header and how to read it from a finished row's record."""
  header: str
  value: Callable[[Mapping[str, Any]], float | None]
  fmt: str = '{:.3f}'


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  notes: str  # Markdown under the title: what the rows are and how to read them.
  rows: tuple[Row, ...]
  columns: tuple[Column, ...]

  def __post_init__(self):
    names = [r.name for r in self.rows]
    if len(set(names)) != len(names):
      raise ValueError(f'Table {self.name}: row names repeat: {names}.')
    for i, row in enumerate(self.rows):
      if row.seeds < 1:
        raise ValueError(f'Table {self.name}: row {row.name} has seeds={row.seeds} (< 1).')
      if row.widths_from_start and not row.start_from:
        raise ValueError(f'Table {self.name}: row {row.name} takes its widths from a '
                         'start_from row but has none.')
      if row.start_from and row.start_from not in names[:i]:
        raise ValueError(f'Table {self.name}: row {row.name} starts from '
                         f'{row.start_from!r}, which is not an earlier row.')


def preset_notes(doc: str, preset: str) -> str:
  """The paragraph of a table file's docstring that starts with `preset` in backticks."""
  for paragraph in doc.split('\n\n'):
    if paragraph.startswith(f'`{preset}`'):
      return paragraph.strip()
  raise ValueError(f'The table docstring has no paragraph for preset `{preset}`.')


# Column readers over a record: {'summary': summary.json, 'config': the run's config,
# 'latency_ms': ...,
# 'dense_latency_ms': the table's first row's latency, 'wall_time_s': ...}.


def summary(key: str) -> Callable[[Mapping[str, Any]], float | None]:
  return lambda r: r['summary'].get(key)


def density(r: Mapping[str, Any]) -> float:
  """Kept weights over the dense model's: the mask density, else the params ratio."""
  s = r['summary']
  return s['density'] if 'density' in s else s['params'] / s['params_dense']


def macs_millions(r: Mapping[str, Any]) -> float:
  return r['summary']['macs'] / 1e6


def macs_reduction(r: Mapping[str, Any]) -> float:
  """Dense MACs over this model's (x fewer)."""
  return r['summary']['macs_dense'] / r['summary']['macs']


def macs_ratio(r: Mapping[str, Any]) -> float:
  """This model's MACs over the dense model's."""
  return r['summary']['macs'] / r['summary']['macs_dense']


POINT_TOLERANCE = 0.03  # A row counts as at its MACs point within 3% of the ratio.


def on_point(r: Mapping[str, Any]) -> str | None:
  """Whether a row with a `target_macs_ratio` reached it (within POINT_TOLERANCE)."""
  target = r['config'].get('channel_pruning', {}).get('target_macs_ratio', 0.0)
  if not target:
    return None
  ratio = macs_ratio(r)
  if abs(ratio / target - 1) <= POINT_TOLERANCE:
    return 'yes'
  return f'no: {ratio:.3f} for {target:.3f}'


def projected_speedup(r: Mapping[str, Any]) -> float:
  """The accelerator model's speedup; a dense compact model's is its MAC reduction."""
  return r['summary'].get('projected_speedup', macs_reduction(r))


def utilisation(r: Mapping[str, Any]) -> float:
  return r['summary'].get('utilisation', 1.0)


def index_bits(r: Mapping[str, Any]) -> float:
  return r['summary'].get('index_bits', 0)


def latency_ms(r: Mapping[str, Any]) -> float | None:
  return r.get('latency_ms')


def latency_speedup(r: Mapping[str, Any]) -> float | None:
  if r.get('latency_ms') is None or r.get('dense_latency_ms') is None:
    return None
  return r['dense_latency_ms'] / r['latency_ms']


def wall_minutes(r: Mapping[str, Any]) -> float:
  return r['wall_time_s'] / 60


def cost_check(r: Mapping[str, Any]) -> str | None:
  """C2S2's cost check: units accepted / retried (restore or halve_lambda) / given up."""
  if 'cost_check' not in r:
    return None
  final = {d['unit']: d['action'] for d in r['cost_check']}  # Each unit's last.
  retried = {d['unit'] for d in r['cost_check']
             if d['action'] in ('restore', 'halve_lambda')}
  counts = [sum(a == 'accept' for a in final.values()), len(retried),
            sum(a == 'give_up' for a in final.values())]
  return ' / '.join(map(str, counts))


def cost_check_trace(r: Mapping[str, Any]) -> list[str]:
  """One line per C2S2 unit: its layers' kept channels and lambdas at each decision
  (marked where binarisation kept channels to stay at the MACs target), the held-out
  metric against the reference and the drop allowed, the action, and the MACs ratio
  after the unit."""
  units: dict[int, list[Mapping[str, Any]]] = {}
  for d in r.get('cost_check', ()):
    units.setdefault(d['unit'], []).append(d)
  lines = []
  for unit, decisions in sorted(units.items()):
    metric = 'miou' if 'miou' in decisions[0]['cost'] else 'top1'
    steps = []
    for d in decisions:
      kept = ', '.join(f'{l["kept"]}/{l["channels"]} lambda {l["lambda"]:g}'
                       for l in d['layers'].values())  # Each layer's own lambda.
      budget = f', budget {d["budget"]:.3f}' if 'budget' in d else ''
      landed = ' (capped at the MACs target)' if d.get('landed') else ''
      steps.append(f'{kept}{landed} ({metric} {d["cost"][metric]:.3f}{budget}) '
                   f'{d["action"]}')
    after = decisions[-1].get('macs_ratio')
    lines.append(f'unit {unit} `{", ".join(decisions[0]["layers"])}` (reference {metric} '
                 f'{decisions[0]["reference"][metric]:.3f}): ' + '; '.join(steps)
                 + (f'; MACs ratio {after:.3f}' if after is not None else ''))
  return lines


def seed_comparisons(top1_of_rows: Sequence[tuple[str, list[float]]]) -> list[str]:
  """Every pair of rows with at least two seeds: the gap of their mean top-1 against
  the combined standard deviation sqrt(s1^2 + s2^2) (sample stds over seeds), and
  whether the gap exceeds it (the rule by which a table calls one method better).

  Args:
    top1_of_rows: (a row's label, its seeds' top-1) in table order.
  """
  seeded = [(label, values) for label, values in top1_of_rows if len(values) > 1]
  lines = []
  for i, (label_a, a) in enumerate(seeded):
    for label_b, b in seeded[i + 1:]:
      gap = statistics.mean(a) - statistics.mean(b)
      combined = math.hypot(statistics.stdev(a), statistics.stdev(b))
      real = abs(gap) > combined + 1e-9  # Float noise of equal means is no gap.
      verdict = f'{label_a if gap > 0 else label_b} is better' if real else (
          'within seed noise')
      lines.append(f'{label_a} minus {label_b}: {gap:+.4f} top-1, combined std '
                   f'{combined:.4f}: {verdict}')
  return lines


TOP1 = Column('top-1', summary('top1'))
COST_CHECK = Column('cost check: units accepted / retried / given up', cost_check, '{}')
