r"""The comparison baselines on the dense ResNet-20 of configs/resnet20_cpu.py (2 CPU cores).

  python main.py --config=configs/resnet20_baselines_cpu.py:unstructured \
      --workdir=runs/resnet20_unstructured
  python main.py --config=configs/resnet20_baselines_cpu.py:l1_filter --workdir=runs/resnet20_l1
  python main.py --config=configs/resnet20_baselines_cpu.py:slimming_train \
      --workdir=runs/resnet20_slimming_train
  python main.py --config=configs/resnet20_baselines_cpu.py:slimming \
      --workdir=runs/resnet20_slimming --config.init_from=runs/resnet20_slimming_train

Each fine-tunes runs/resnet20_cpu_heldout (the dense run with `data.held_out=5000`, as
C2S2 needs) for 2 epochs at lr 0.01: unstructured 2 of 8's density (25%) by gradual
magnitude pruning; L1 filter pruning of 30% of each block's inner channels; network
slimming's L1-on-scales training, then pruning by one global threshold. The comparison
runs, with their measured figures, are `python -m train.reproduce --table=cifar10_cci`
and `--table=cifar10_c2s2` (docs/results.md). Expect about 8 minutes per run on the
2-core x86 CPU of this project's machines (the fine-tune schedule of the CCI configs,
measured there).
"""

from configs import baseline_schedules, resnet20_cpu


def get_config(baseline: str = 'unstructured'):
  config = resnet20_cpu.get_config()
  config.data.held_out = 5000
  baseline_schedules.apply(config, baseline, dense_workdir='runs/resnet20_cpu_heldout')
  return config
