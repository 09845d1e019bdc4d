"""An independent PyTorch ResNet-20 on our CIFAR-10 split: what the data allows.

  pip install -r requirements-bench.txt        # PyTorch's CPU build (optional)
  python benchmarks/torch_cifar_reference.py \
      --arrays=$HOME/.cache/cci_c2s2/cifar10-jpeg.tar.gz-<key>.npz \
      --epochs=50 --batch=32 --lr=0.025 --weight_decay=5e-4 > torch_reference.jsonl

Reads the decoded-array cache that any of our runs on the shared archive writes
(train/data.py; `<key>` names the archive's version) and trains
benchmarks/torch_worker.py's ResNet-20 (option-A shortcuts, channels_last) with the
recipe of configs/tables/_cifar10_cpu.py: the same 45,000 images (data.held_out=5000,
the same fixed permutation), per-channel normalisation, zero-pad-4 crop and mirror,
SGD with Nesterov momentum 0.9 and coupled weight decay, linear warm-up then cosine to 0
per step, kaiming-normal (fan-out) convolutions. Prints one JSON line per evaluation
(test top-1 and loss, training accuracy of the steps since the last evaluation,
training images/s). Its purpose: tell a cap of the data and schedule from a flaw of our
JAX pipeline, at PyTorch's CPU speed. Imports torch and numpy only, so it runs in a venv
without JAX (hence its own numpy crop and mirror beside train/data.py's `augment`).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_worker import CifarResNet  # noqa: E402

HELD_OUT_SEED = 7919  # train/data.py's split_off.


def load_split(path: str, held_out: int) -> dict[str, np.ndarray]:
  """Train (without the held-out images), test and normalisation stats of the cache."""
  with np.load(os.path.expanduser(path)) as cached:
    arrays = {name: cached[name] for name in
              ('train_images', 'train_labels', 'test_images', 'test_labels', 'mean',
               'std')}
  if held_out:
    count = len(arrays['train_labels'])
    keep = np.sort(np.random.default_rng(HELD_OUT_SEED).permutation(count)[held_out:])
    arrays['train_images'] = arrays['train_images'][keep]
    arrays['train_labels'] = arrays['train_labels'][keep]
  return arrays


def to_tensor(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
  """NHWC uint8 -> normalised NCHW float32 in channels_last memory."""
  x = (images.astype(np.float32) - mean) / std
  return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last)


def augment(images: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
  """Zero-pad by `pad`, random crop back to H x W, mirror half of the images."""
  n, height, width, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = rng.integers(0, 2 * pad + 1, (n, 2))
  rows = offsets[:, 0, None] + np.arange(height)
  cols = offsets[:, 1, None] + np.arange(width)
  out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flips = rng.random(n) < 0.5
  return np.where(flips[:, None, None, None], out[:, :, ::-1], out)


def learning_rate(step: int, total: int, warmup: int, peak: float) -> float:
  """Linear warm-up to `peak`, then cosine to 0 over the remaining steps."""
  if step < warmup:
    return peak * (step + 1) / warmup
  return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple:
  model.eval()
  correct, loss = 0, 0.0
  with torch.no_grad():
    for start in range(0, len(labels), 500):
      logits = model(images[start:start + 500])
      loss += F.cross_entropy(logits, labels[start:start + 500], reduction='sum').item()
      correct += (logits.argmax(1) == labels[start:start + 500]).sum().item()
  model.train()
  return correct / len(labels), loss / len(labels)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--arrays', required=True, help='decoded-array cache (.npz)')
  parser.add_argument('--held_out', type=int, default=5000)
  parser.add_argument('--epochs', type=float, default=50)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--lr', type=float, default=0.025)
  parser.add_argument('--weight_decay', type=float, default=5e-4)
  parser.add_argument('--warmup_epochs', type=float, default=1.0)
  parser.add_argument('--label_smoothing', type=float, default=0.0)
  parser.add_argument('--eval_every_epochs', type=float, default=5.0)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  torch.manual_seed(args.seed)
  torch.set_num_threads(os.cpu_count() or 1)
  data = load_split(args.arrays, args.held_out)
  test_x = to_tensor(data['test_images'], data['mean'], data['std'])
  test_y = torch.from_numpy(data['test_labels'].astype(np.int64))
  model = CifarResNet(20).to(memory_format=torch.channels_last)
  for module in model.modules():
    if isinstance(module, nn.Conv2d):
      nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
  optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                              nesterov=True, weight_decay=args.weight_decay)
  per_epoch = len(data['train_labels']) // args.batch
  total = round(args.epochs * per_epoch)
  warmup = round(args.warmup_epochs * per_epoch)
  eval_every = max(1, round(args.eval_every_epochs * per_epoch))
  rng = np.random.default_rng(args.seed)
  order = np.array([], np.int64)
  correct = seen = 0
  train_seconds, start = 0.0, time.perf_counter()
  for step in range(total):
    if step % per_epoch == 0:
      order = rng.permutation(len(data['train_labels']))
    batch = order[(step % per_epoch) * args.batch:(step % per_epoch + 1) * args.batch]
    images = to_tensor(augment(data['train_images'][batch], rng, 4), data['mean'],
                       data['std'])
    labels = torch.from_numpy(data['train_labels'][batch].astype(np.int64))
    for group in optimizer.param_groups:
      group['lr'] = learning_rate(step, total, warmup, args.lr)
    optimizer.zero_grad(set_to_none=True)
    logits = model(images)
    F.cross_entropy(logits, labels, label_smoothing=args.label_smoothing).backward()
    optimizer.step()
    correct += (logits.argmax(1) == labels).sum().item()
    seen += len(labels)
    if (step + 1) % eval_every == 0 or step + 1 == total:
      train_seconds += time.perf_counter() - start
      top1, loss = evaluate(model, test_x, test_y)
      print(json.dumps({'step': step + 1, 'epoch': round((step + 1) / per_epoch, 2),
                        'test_top1': top1, 'test_loss': round(loss, 4),
                        'train_accuracy': round(correct / seen, 4),
                        'images_per_s': round((step + 1) * args.batch / train_seconds, 1),
                        'train_seconds': round(train_seconds, 1), **vars(args)}),
            flush=True)
      correct = seen = 0
      start = time.perf_counter()


if __name__ == '__main__':
  main()
