r"""VGG-16 (batch norm) on CIFAR-10 with CCI 2 of 8, dynamic algorithm, 160 epochs.

  python main.py --config=configs/vgg_cci.py --workdir=runs/vgg16_cci

Expect: not run here (about 26 minutes per epoch on the 2-core CPU; accelerator
schedule). `:oneshot` / `:gradual` fine-tune a dense VGG run in runs/vgg16_dense
(configs/vgg16_dense.py).
"""

from configs import cci_schedules, vgg16_dense


def get_config(method: str = 'dynamic'):
  config = vgg16_dense.get_config()
  cci_schedules.apply(config, method, dense_workdir='runs/vgg16_dense')
  return config
