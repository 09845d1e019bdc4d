r"""C2S2 on the dense ResNet-20 of configs/resnet20_cpu.py, shared CIFAR-10, 2 CPU cores.

  python main.py --config=configs/resnet20_c2s2_cpu.py --workdir=runs/resnet20_c2s2

Starts from the dense run made with the 5,000 held-out images left out:

  python main.py --config=configs/resnet20_cpu.py --config.data.held_out=5000 \
      --workdir=runs/resnet20_cpu_heldout

Three layers per step (one stage at a time: 3 steps of
1.5 epochs on 45,000 images), then a 2-epoch fine-tune of the compact model at lr 0.01.
Expect: MEASURE
"""

from configs import c2s2_schedules, resnet20_cpu


def get_config():
  config = resnet20_cpu.get_config()
  c2s2_schedules.apply(config, dense_workdir='runs/resnet20_cpu_heldout')
  config.channel_pruning.layers_per_step = 3
  config.channel_pruning.lambda_l1 = 0.02
  config.channel_pruning.channel_multiple = 8  # XLA:CPU runs multiples of 8 faster.
  return config
