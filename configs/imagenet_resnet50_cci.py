r"""ResNet-50 on ImageNet (tfds imagenet2012) with CCI 2 of 8, dynamic, 90 epochs.

  python main.py --config=configs/imagenet_resnet50_cci.py --workdir=runs/r50_cci \
      --config.data.data_dir=/path/to/tensorflow_datasets

Expect: not run here (accelerator schedule: batch 256 per 8 devices, lr 0.1 per 256, 5
warm-up epochs, cosine to 90 epochs, weight decay 1e-4; METHODS.md 4). SR-STE reports
77.0% top-1 for 2:4 on ResNet-50 (a different pattern; for placing results only). The
data source resizes and center-crops; random-resized-crop augmentation is not
implemented yet, so expect less than published figures.
"""

from configs import base, cci_schedules


def get_config(method: str = 'dynamic'):
  config = base.get_base_config()
  config.model.name = 'resnet50'
  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.test_split = 'validation'
  config.data.image_size = 224
  config.data.crop_padding = 0
  config.data.eval_resize = 256
  config.batch_size = 256
  config.eval_batch_size = 256
  config.num_epochs = 90.0
  config.optimizer.learning_rate = 0.1 * config.batch_size / 256
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 5.0
  config.optimizer.weight_decay = 1e-4
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 5000
  cci_schedules.apply(config, method, dense_workdir='runs/r50_dense')
  return config
