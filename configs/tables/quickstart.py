"""The three quickstarts as one table: the README's headline figures.

  python -m train.reproduce --table=quickstart --preset=cpu

ResNet-8 on scikit-learn's handwritten digits (nothing to download): the dense
quickstart, CCI 2 of 8 `dynamic` from scratch, and C2S2 from the dense row, each
exactly its config (configs/quickstart*.py). About 3 minutes on 2 CPU cores. Both
presets are the same table.
"""

from train.tables import (COST_CHECK, TOP1, Column, Row, Table, density, latency_ms,
                          macs_reduction, summary)

COLUMNS = (
    TOP1,
    Column('density', density),
    Column('params', summary('params'), '{:,.0f}'),
    Column('MACs reduction (x)', macs_reduction, '{:.2f}'),
    Column('CPU latency, batch 128 (ms)', latency_ms, '{:.1f}'),
    Column('wall (s)', lambda r: r['wall_time_s'], '{:.0f}'),
    COST_CHECK,
)


def get_table(preset: str) -> Table:
  del preset  # One schedule: the quickstarts run anywhere in minutes.
  rows = (
      Row('quickstart', 'dense', 'dense', 'configs/quickstart.py'),
      Row('quickstart_cci', 'CCI 2 of 8 dynamic', 'CCI dynamic',
          'configs/quickstart_cci.py'),
      Row('quickstart_c2s2', 'C2S2', 'C2S2', 'configs/quickstart_c2s2.py',
          start_from='quickstart'),
  )
  return Table('quickstart', 'Quickstarts: ResNet-8 on the embedded digits',
               __doc__.split('\n\n', 2)[2], rows, COLUMNS)
