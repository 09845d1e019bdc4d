r"""ResNet-56 on CIFAR-10, the standard 160-epoch schedule, for accelerators.

  python main.py --config=configs/resnet56_dense.py --workdir=runs/resnet56_dense

Expect: about 93% test top-1 (He et al. 2016 report 93.03%; the shared JPEG copy of
CIFAR-10 gives a little less). Not run here: at 24 images/s on the 2-core CPU of this
project's machines, 160 epochs would take about 90 hours; on one modern GPU it takes
roughly 1-2 hours (estimate, not measured). 62,560 steps at batch 128.
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.name = 'resnet56'
  config.num_epochs = 160.0
  config.eval_every_steps = 3910  # Every 10 epochs.
  config.checkpoint_every_steps = 1955  # Every 5 epochs.
  return config
