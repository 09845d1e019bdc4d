"""CCI against dense, unstructured and filter pruning on CIFAR-10 (METHODS.md 1, 3).

  python -m train.reproduce --table=cifar10_cci --preset=cpu

`cpu`: the converged ResNet-20 of configs/tables/_cifar10_cpu.py (dense 50 epochs; every
pruned row fine-tunes it 6 epochs) at densities 0.25 and 0.125: unstructured (GMP), L1
filter at CCI's MACs, CCI 2 of 8 and 1 of 8 `oneshot` and `dynamic` (as a fine-tune),
3 fine-tune seeds at density 0.25; `dynamic` from scratch (the dense schedule) for 2 of
8; and C2S2 at 2x fewer MACs (cifar10_c2s2's row, and the same with kept widths rounded
to multiples of 8) followed by CCI 2 of 8 `dynamic` on the compact model.

`cpu_short` (results/cpu_short/): ResNet-20, dense 4 epochs on 45,000 images (the 5,000
C2S2 holds out are left out by every row, so both CIFAR-10 tables share the dense run);
`oneshot`, `gradual`, unstructured and filter pruning fine-tune it for 1 epoch at lr
0.01; `dynamic` trains 4 epochs from scratch. About 3 hours on 2 CPU cores.

`paper`: ResNet-56, 160 epochs, fine-tunes 40 (accelerators).
"""

import dataclasses

from configs.tables import _cifar10_cpu as cpu
from configs.tables.cifar10_c2s2 import converged_rows as c2s2_rows
from train.tables import (TOP1, Column, Row, Table, density, index_bits, latency_ms,
                          macs_millions, on_point, preset_notes, projected_speedup,
                          utilisation, wall_minutes)

PATTERNS = (('2of8', 8, 2), ('1of4', 4, 1), ('1of8', 8, 1))
COLUMNS = (
    TOP1,
    Column('density', density),
    Column('MACs (M)', macs_millions, '{:.2f}'),
    Column('at its MACs point (+-3%)', on_point, '{}'),
    Column('index bits', index_bits, '{:,.0f}'),
    Column('utilisation', utilisation, '{:.0%}'),
    Column('projected speedup', projected_speedup, '{:.2f}'),
    Column('CPU latency, batch 128 (ms)', latency_ms, '{:.0f}'),
    Column('wall (min)', wall_minutes, '{:.0f}'),
)


def converged_rows() -> tuple[Row, ...]:
  """The `cpu` preset's rows."""
  rows = [Row('dense', 'dense', 'dense', cpu.DENSE_CONFIG, cpu.DENSE)]
  for density_name, keep, seeds in (('25', 2, cpu.KEY_SEEDS), ('12.5', 1, 1)):
    pattern = {'sparsity.group_size': 8, 'sparsity.keep': keep}
    rows += [
        Row(f'unstructured_{density_name}', f'unstructured {density_name}% (GMP)',
            'unstructured', f'{cpu.BASELINES}:unstructured', {**cpu.FINETUNE, **pattern},
            start_from='dense', seeds=seeds),
        Row(f'l1_filter_cci_{keep}of8', f'L1 filter at CCI {keep} of 8 MACs', 'L1 filter',
            f'{cpu.BASELINES}:l1_filter',
            {**cpu.FINETUNE,
             'channel_pruning.target_macs_ratio': cpu.CCI_MACS_RATIO[keep]},
            start_from='dense', seeds=seeds)]
    for method in ('oneshot', 'dynamic'):
      rows.append(Row(f'cci_{keep}of8_{method}_ft', f'CCI {keep} of 8 {method}',
                      f'CCI {method}', f'{cpu.CCI}:{method}', {**cpu.FINETUNE, **pattern},
                      start_from='dense', seeds=seeds))
  rows.append(Row('cci_2of8_dynamic_scratch', 'CCI 2 of 8 dynamic from scratch',
                  'CCI dynamic', f'{cpu.CCI}:dynamic', cpu.DENSE))
  # C2S2's kept widths are multiples of CCI's group, so CCI groups every kernel of the
  # compact model but the 3-channel stem: with the C2S2 table's multiple of 4, the
  # conv2 kernels reading 4, 12, 20 or 52 channels stayed dense (density 0.424).
  c2s2_2x = next(r for r in c2s2_rows() if r.name == 'c2s2_2x')
  rows += [dataclasses.replace(c2s2_2x, label='C2S2 2x (cifar10_c2s2)', seeds=1),
           dataclasses.replace(
               c2s2_2x, name='c2s2_2x_multiple8', seeds=1,
               label='C2S2 2x, widths multiples of 8 (the start of the next row)',
               overrides={**c2s2_2x.overrides, 'channel_pruning.channel_multiple': 8}),
           Row('c2s2_2x_cci_2of8', 'C2S2 2x, then CCI 2 of 8 dynamic', 'C2S2 + CCI',
               f'{cpu.CCI}:dynamic', {**cpu.FINETUNE, 'sparsity.group_size': 8,
                                      'sparsity.keep': 2},
               start_from='c2s2_2x_multiple8', widths_from_start=True)]
  return tuple(rows)


def get_table(preset: str) -> Table:
  if preset == 'cpu':
    return Table('cifar10_cci', 'CCI on CIFAR-10 (cpu preset)',
                 preset_notes(__doc__, preset), converged_rows(), COLUMNS)
  if preset == 'cpu_short':
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
    raise ValueError(f'Table cifar10_cci has presets cpu, cpu_short and paper, not '
                     f'{preset!r}.')
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
  return Table('cifar10_cci', f'CCI on CIFAR-10 ({preset} preset)',
               preset_notes(__doc__, preset), tuple(rows), COLUMNS)
