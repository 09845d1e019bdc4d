"""C2S2 against L1-filter pruning and network slimming on CIFAR-10 (METHODS.md 2, 3).

  python -m train.reproduce --table=cifar10_c2s2 --preset=cpu

`cpu`: the converged ResNet-20 of configs/tables/_cifar10_cpu.py (dense 50 epochs, every
pruned row fine-tuned 6): L1 filter, network slimming (after its 6-epoch sparsity
training) and C2S2 (`target_macs_ratio`) at 2x and 3x fewer MACs (ratios 0.50 and
0.33; a row further than 3% from its point is marked), 3 fine-tune seeds at 2x.

`cpu_short` (results/cpu_short/): ResNet-20 from the dense run shared with cifar10_cci
(4 epochs, 5,000 images held out for C2S2's cost check); L1 filter and slimming prune
to Li et al.'s ResNet-56 MACs reduction (27.6% fewer: ratio 0.724), slimming after one epoch of L1 on the
batch-norm scales; C2S2 at two held-out budgets (epsilon 1% and 3% top-1) with half
phases, lambda 0.05 and kept channels rounded up to multiples of 4 (lambda 0.02 with
multiples of 8, the settings of configs/resnet20_c2s2_cpu.py, pruned nothing here);
every row fine-tunes 1 epoch at lr 0.01.

`paper`: ResNet-56 (accelerators).
"""

from configs.tables import _cifar10_cpu as cpu
from train.tables import (COST_CHECK, TOP1, Column, Row, Table, latency_speedup,
                          macs_ratio, macs_reduction, on_point, preset_notes, summary,
                          wall_minutes)

COLUMNS = (
    TOP1,
    Column('params', summary('params'), '{:,.0f}'),
    Column('MACs reduction (x)', macs_reduction, '{:.2f}'),
    Column('MACs ratio', macs_ratio, '{:.3f}'),
    Column('at its point (+-3%)', on_point, '{}'),
    Column('CPU latency speedup, batch 128 (x)', latency_speedup, '{:.2f}'),
    Column('wall (min)', wall_minutes, '{:.0f}'),
    COST_CHECK,
)
LI_ET_AL_MACS_RATIO = 1 - 0.276


POINTS = (('2x', 0.50, cpu.KEY_SEEDS), ('3x', 0.33, 1))


def converged_rows() -> tuple[Row, ...]:
  """The `cpu` preset's rows: each method at each MACs point."""
  rows = [Row('dense', 'dense', 'dense', cpu.DENSE_CONFIG, cpu.DENSE),
          Row('slimming_train', 'slimming: L1 on BN scales', 'slimming (training)',
              f'{cpu.BASELINES}:slimming_train', cpu.FINETUNE, start_from='dense')]
  for point, ratio, seeds in POINTS:
    target = {'channel_pruning.target_macs_ratio': ratio}
    rows += [
        Row(f'l1_filter_{point}', f'L1 filter, {point} fewer MACs', 'L1 filter',
            f'{cpu.BASELINES}:l1_filter', {**cpu.FINETUNE, **target}, start_from='dense',
            seeds=seeds),
        Row(f'slimming_{point}', f'network slimming, {point} fewer MACs', 'network slimming',
            f'{cpu.BASELINES}:slimming', {**cpu.FINETUNE, **target},
            start_from='slimming_train', seeds=seeds),
        Row(f'c2s2_{point}', f'C2S2, {point} fewer MACs', 'C2S2', cpu.C2S2,
            {**cpu.FINETUNE, **cpu.SELECTION, **target}, start_from='dense', seeds=seeds)]
  return tuple(rows)


def get_table(preset: str) -> Table:
  if preset == 'cpu':
    return Table('cifar10_c2s2', 'C2S2 on CIFAR-10 (cpu preset)',
                 preset_notes(__doc__, preset), converged_rows(), COLUMNS)
  if preset == 'cpu_short':
    dense, baselines, c2s2 = ('configs/resnet20_cpu.py', 'configs/resnet20_baselines_cpu.py',
                              'configs/resnet20_c2s2_cpu.py')
    dense_settings = {'data.held_out': 5000, 'num_epochs': 4.0}
    short = {'data.held_out': 5000, 'num_epochs': 1.0}
    selection = {'channel_pruning.phase1_epochs': 0.5, 'channel_pruning.phase2_epochs': 0.25,
                 'channel_pruning.lambda_l1': 0.05, 'channel_pruning.channel_multiple': 4}
  elif preset == 'paper':
    dense, baselines, c2s2 = ('configs/resnet56_dense.py', 'configs/resnet56_baselines.py',
                              'configs/resnet_c2s2.py')
    dense_settings = short = {'data.held_out': 5000}
    selection = {}
  else:
    raise ValueError(f'Table cifar10_c2s2 has presets cpu, cpu_short and paper, not '
                     f'{preset!r}.')
  target = {'channel_pruning.target_macs_ratio': LI_ET_AL_MACS_RATIO}
  rows = (
      Row('dense', 'dense', 'dense', dense, dense_settings),
      Row('l1_filter_li', 'L1 filter (Li et al. MACs)', 'L1 filter',
          f'{baselines}:l1_filter', {**short, **target}, start_from='dense'),
      Row('slimming_train', 'slimming: L1 on BN scales', 'slimming (training)',
          f'{baselines}:slimming_train', short, start_from='dense'),
      Row('slimming_li', 'network slimming (Li et al. MACs)', 'network slimming',
          f'{baselines}:slimming', {**short, **target}, start_from='slimming_train'),
      Row('c2s2_eps1', 'C2S2, budget 1% top-1', 'C2S2', c2s2,
          {**short, **selection, 'channel_pruning.epsilon': 0.01}, start_from='dense'),
      Row('c2s2_eps3', 'C2S2, budget 3% top-1', 'C2S2', c2s2,
          {**short, **selection, 'channel_pruning.epsilon': 0.03}, start_from='dense'),
  )
  return Table('cifar10_c2s2', f'C2S2 on CIFAR-10 ({preset} preset)',
               preset_notes(__doc__, preset), rows, COLUMNS)
