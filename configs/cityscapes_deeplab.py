r"""DeepLab-style segmentation on Cityscapes (image + mask folders): dense, C2S2, CCI.

  python main.py --config=configs/cityscapes_deeplab.py --workdir=runs/cs_dense \
      --config.data.path=/path/to/cityscapes_folder
  python main.py --config=configs/cityscapes_deeplab.py:c2s2 --workdir=runs/cs_c2s2 ...
  python main.py --config=configs/cityscapes_deeplab.py:cci --workdir=runs/cs_cci ...

Expect: not run here (accelerators). The folder holds classes.txt (the 19 evaluation
classes), SPLIT/images/NAME.png and SPLIT/masks/NAME.png with train ids 0..18 and 255
for the ignored labels (cityscapesScripts' `createTrainIdLabelImgs` writes such masks;
`train/seg_data.py` FOLDER_LAYOUT). Training takes random 512x512 crops at scales 0.5 to
2 with flips; evaluation pads the 1024x2048 validation images to their canvas and counts
every real pixel (full resolution). Our decisions (not tuned): SGD lr 0.01 per 8
images, poly-like cosine over 240 epochs (about 90k steps at batch 8, DeepLab's
schedule), weight decay 1e-4; C2S2 with the cost check on held-out mIoU (epsilon 0.01 =
1 mIoU point, 300 training images held out), two groups per step.
"""

from configs import base, c2s2_schedules, cci_schedules

DENSE_WORKDIR = 'runs/cs_dense'
VARIANTS = ('dense', 'c2s2', 'cci')


def get_config(variant: str = 'dense'):
  if variant not in VARIANTS:
    raise ValueError(f'configs/cityscapes_deeplab.py:{variant}; choose one of {VARIANTS}.')
  config = base.get_base_config()
  config.model.name = 'deeplab'
  config.data.source = 'seg_folder'
  config.data.path = ''  # Set on the command line.
  config.data.train_split = 'train'
  config.data.test_split = 'val'
  config.data.image_size = 512
  config.data.scale_range = (0.5, 2.0)
  config.data.flip = True
  config.data.held_out = 300
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 240.0
  config.optimizer.learning_rate = 0.01 * config.batch_size / 8
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 2.0
  config.optimizer.weight_decay = 1e-4
  config.log_every_steps = 100
  config.eval_every_steps = 10000
  config.checkpoint_every_steps = 5000
  config.channel_pruning.latency_batch = 1
  if variant == 'c2s2':
    c2s2_schedules.apply(config, DENSE_WORKDIR)
    config.channel_pruning.cost_metric = 'miou'
    config.channel_pruning.epsilon = 0.01
    config.channel_pruning.layers_per_step = 2
  elif variant == 'cci':
    cci_schedules.apply(config, 'dynamic', DENSE_WORKDIR)
  return config
