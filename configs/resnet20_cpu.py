r"""ResNet-20 on the shared CIFAR-10 archive, a schedule for 2 CPU cores.

  python main.py --config=configs/resnet20_cpu.py --workdir=runs/resnet20_cpu

Expect: 0.827 test top-1 (loss 0.515), 209 training images/s, 32 minutes of wall time
(8 epochs, 6,248 steps of 64) on the 2-core x86 CPU of this project's machines, no
accelerator (measured 2026-11-22 with the command above; other jobs shared the CPU for
part of the run: about 245 images/s when it ran alone).
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.name = 'resnet20'
  config.batch_size = 64
  config.num_epochs = 8.0
  config.optimizer.learning_rate = 0.1
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 0.3
  config.optimizer.weight_decay = 5e-4
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  return config
