r"""VGG-16 (batch norm) on CIFAR-10 with CCI 2 of 8, dynamic algorithm, 160 epochs.

  python main.py --config=configs/vgg_cci.py --workdir=runs/vgg16_cci

Expect: not run here (about 26 minutes per epoch on the 2-core CPU; accelerator
schedule). `:oneshot` / `:gradual` fine-tune a dense VGG run in runs/vgg16_dense
(this config with --config.sparsity.method=none).
"""

from configs import base, cci_schedules


def get_config(method: str = 'dynamic'):
  config = base.get_base_config()
  config.model.name = 'vgg16'
  config.optimizer.weight_decay = 5e-4
  config.eval_every_steps = 3910
  config.checkpoint_every_steps = 1955
  cci_schedules.apply(config, method, dense_workdir='runs/vgg16_dense')
  return config
