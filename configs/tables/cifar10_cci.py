"""CCI against dense, unstructured and filter pruning on CIFAR-10 (METHODS.md 1, 3).

  python -m train.reproduce --table=cifar10_cci --preset=cpu

`cpu`: ResNet-20, dense 4 epochs on 45,000 images (the 5,000 C2S2 holds out are left
out by every row, so both CIFAR-10 tables share the dense run); `oneshot`, `gradual`,
unstructured and filter pruning fine-tune it for 1 epoch at lr 0.01; `dynamic` trains
4 epochs from scratch. About 3 hours on 2 CPU cores. `paper`: ResNet-56, 160 epochs,
fine-tunes 40 (accelerators).
"""

from train.tables import (TOP1, Column, Row, Table, density, index_bits, latency_ms,
                          macs_millions, projected_speedup, utilisation, wall_minutes)

PATTERNS = (('2of8', 8, 2), ('1of4', 4, 1), ('1of8', 8, 1))
COLUMNS = (
    TOP1,
    Column('density', density),
    Column('MACs (M)', macs_millions, '{:.2f}'),
    Column('index bits', index_bits, '{:,.0f}'),
    Column('utilisation', utilisation, '{:.0%}'),
    Column('projected speedup', projected_speedup, '{:.2f}'),
    Column('CPU latency, batch 128 (ms)', latency_ms, '{:.0f}'),
    Column('wall (min)', wall_minutes, '{:.0f}'),
)


def get_table(preset: str) -> Table:
  if preset == 'cpu':
    dense, cci, baselines = ('configs/resnet20_cpu.py', 'configs/resnet20_cci_cpu.py',
                             'configs/resnet20_baselines_cpu.py')
    common = {'data.held_out': 5000}
    long, short = {**common, 'num_epochs': 4.0}, {**common, 'num_epochs': 1.0}
    filter_target = 0.26  # The MACs ratio of CCI 2 of 8 with ResNet-20's dense stem.
  elif preset == 'paper':
    dense, cci, baselines = ('configs/resnet56_dense.py', 'configs/resnet_cci.py',
                             'configs/resnet56_baselines.py')
    long = short = {'data.held_out': 5000}
    filter_target = 0.26
  else:
    raise ValueError(f'Table cifar10_cci has presets cpu and paper, not {preset!r}.')
  rows = [Row('dense', 'dense', 'dense', dense, long)]
  for density_name, keep in (('25', 2), ('12.5', 1)):
    rows.append(Row(f'unstructured_{density_name}', f'unstructured {density_name}% (GMP)',
                    'unstructured', f'{baselines}:unstructured',
                    {**short, 'sparsity.keep': keep}, start_from='dense'))
  rows.append(Row('filter_equal_macs', 'L1 filter, CCI 2 of 8 MACs', 'L1 filter',
                  f'{baselines}:l1_filter',
                  {**short, 'channel_pruning.target_macs_ratio': filter_target},
                  start_from='dense'))
  for name, group, keep in PATTERNS:
    for method in ('oneshot', 'gradual', 'dynamic'):
      settings = {**(long if method == 'dynamic' else short),
                  'sparsity.group_size': group, 'sparsity.keep': keep}
      rows.append(Row(f'cci_{name}_{method}', f'CCI {keep} of {group} {method}',
                      f'CCI {method}', f'{cci}:{method}', settings,
                      start_from='' if method == 'dynamic' else 'dense'))
  return Table('cifar10_cci', f'CCI on CIFAR-10 ({preset} preset)', __doc__.split('\n\n', 2)[2],
               tuple(rows), COLUMNS)
