r"""ResNet-56 on CIFAR-10 with C2S2 channel selection, accelerator schedule.

  python main.py --config=configs/resnet_c2s2.py --workdir=runs/resnet56_c2s2

Expect: not run here (27 prunable layers x 1.5 epochs of selection plus a 40-epoch
fine-tune of ResNet-56 is about 40 hours on the 2-core CPU of this project's machines).
Starts from runs/resnet56_dense (configs/resnet56_dense.py trained with
--config.data.held_out=5000). For the measured CPU-scale counterpart see
configs/resnet20_c2s2_cpu.py and docs/results.md.
"""

from configs import c2s2_schedules, resnet56_dense


def get_config():
  config = resnet56_dense.get_config()
  c2s2_schedules.apply(config, dense_workdir='runs/resnet56_dense')
  return config
