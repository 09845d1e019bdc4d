r"""ResNet-50 on ImageNet (tfds imagenet2012), dense, 90 epochs: the base of every
ResNet-50 method config.

  python main.py --config=configs/imagenet_resnet50_dense.py --workdir=runs/r50_dense \
      --config.data.data_dir=/path/to/tensorflow_datasets --config.data.held_out=5000

Expect: not run here (accelerator schedule: batch 256 per 8 devices, lr 0.1 per 256, 5
warm-up epochs, cosine to 90 epochs, weight decay 1e-4; METHODS.md 4). Hold out 5,000
training images (as above) when C2S2 or the baselines will start from the run: C2S2's
cost check evaluates them.
"""

from configs import base


def get_config():
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
  return config
