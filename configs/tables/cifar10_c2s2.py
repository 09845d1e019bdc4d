"""C2S2 against L1-filter pruning and network slimming on CIFAR-10 (METHODS.md 2, 3).

  python -m train.reproduce --table=cifar10_c2s2 --preset=cpu

`cpu`: ResNet-20 from the dense run shared with cifar10_cci (4 epochs, 5,000 images
held out for C2S2's cost check); L1 filter and slimming prune to Li et al.'s ResNet-56
MACs reduction (27.6% fewer: ratio 0.724), slimming after one epoch of L1 on the
batch-norm scales; C2S2 at two held-out budgets (epsilon 1% and 3% top-1) with half
phases, lambda 0.05 and kept channels rounded up to multiples of 4 (lambda 0.02 with
multiples of 8, the settings of configs/resnet20_c2s2_cpu.py, pruned nothing here);
every row fine-tunes 1 epoch at lr 0.01. `paper`: ResNet-56 (accelerators).
"""

from train.tables import (COST_CHECK, TOP1, Column, Row, Table, latency_speedup,
                          macs_reduction, summary, wall_minutes)

COLUMNS = (
    TOP1,
    Column('params', summary('params'), '{:,.0f}'),
    Column('MACs reduction (x)', macs_reduction, '{:.2f}'),
    Column('CPU latency speedup, batch 128 (x)', latency_speedup, '{:.2f}'),
    Column('wall (min)', wall_minutes, '{:.0f}'),
    COST_CHECK,
)
LI_ET_AL_MACS_RATIO = 1 - 0.276


def get_table(preset: str) -> Table:
  if preset == 'cpu':
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
    raise ValueError(f'Table cifar10_c2s2 has presets cpu and paper, not {preset!r}.')
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
               __doc__.split('\n\n', 2)[2], rows, COLUMNS)
