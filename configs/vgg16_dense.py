r"""VGG-16 (batch norm) on CIFAR-10, dense, 160 epochs: the base of every VGG config.

  python main.py --config=configs/vgg16_dense.py --workdir=runs/vgg16_dense

Expect: not run here (about 26 minutes per epoch on the 2-core CPU; accelerator
schedule). Add --config.data.held_out=5000 when C2S2 will start from the run (its cost
check evaluates those images).
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.name = 'vgg16'
  config.optimizer.weight_decay = 5e-4
  config.eval_every_steps = 3910
  config.checkpoint_every_steps = 1955
  return config
