"""ImageNet training-pipeline throughput: grain workers against the one-thread decoder.

  python -m benchmarks --only=imagenet_pipeline

Generates a folder of ImageNet-like JPEGs once (2,000 images of about 500x375, quality
90, in $CCI_C2S2_CACHE/imagenet_like_2000), then measures training batches of 224x224
images per second, in steady state (after the workers' start and a warm-up): the
per-example pipeline of train/imagenet_data.py (Inception crop, draft decode) with 1 and
with 2 worker processes, and the pipeline this project had before it (every JPEG decoded
whole by PIL in one thread behind the prefetch thread, resize + center crop). They run
in a fresh Python process (nothing the other benchmarks left behind shares the cores),
in alternating rounds, each pipeline opened anew, timed alone and closed; each figure
is the median round. Each entry also gives the CPU time of the pipeline's processes per image
(`cpu_ms_per_image_*`): the cores a given images/s needs. Targets: 2 workers at least
3x the old pipeline (ratio <= 1/3) and at least 1.7x one worker (ratio <= 1/1.7).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil  # Required by orbax-checkpoint and tensorflow-datasets (requirements.txt).
from PIL import Image

from benchmarks import common
from configs import base
from train import data

# (images, (width, height), image_size, batch, warm-up batches, timed batches, rounds)
FULL = (2000, (500, 375), 224, 64, 5, 30, 3)
SMOKE = (16, (64, 48), 32, 4, 1, 2, 1)
_CLASSES = 10
_ROOT = Path(__file__).resolve().parent.parent


def jpeg_folder(count: int, size: tuple[int, int]) -> Path:
  """The cached folder train/CLASS/i.jpg (+ validation/), made once, whole or absent."""
  cache = Path(os.environ.get('CCI_C2S2_CACHE') or '~/.cache/cci_c2s2').expanduser()
  root = cache / f'imagenet_like_{count}_{size[0]}x{size[1]}'
  if root.exists():
    return root
  cache.mkdir(parents=True, exist_ok=True)
  building = Path(tempfile.mkdtemp(dir=cache, prefix=f'.{root.name}.'))
  rng = np.random.default_rng(0)
  for i in range(count):
    split = 'validation' if i % 10 == 9 else 'train'
    folder = building / split / f'class{i // 2 % _CLASSES}'
    folder.mkdir(parents=True, exist_ok=True)
    width, height = (int(s * rng.uniform(0.8, 1.2)) for s in size)
    # Smooth content (JPEG-typical), not noise: a colour gradient plus a little noise.
    ramp = np.linspace(0, 255, width)[None, :, None] * rng.uniform(0.2, 1, 3)
    pixels = ramp + rng.normal(0, 12, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        folder / f'{i}.jpg', quality=90)
  try:
    building.rename(root)
  except OSError:  # Made meanwhile by another run.
    shutil.rmtree(building)
  return root


class WholeDecode:
  """The former per-example source: full decode, shorter side to 1.14 x size, center."""

  def __init__(self, files: list[Path], image_size: int):
    self.files, self.image_size = files, image_size

  def __len__(self) -> int:
    return len(self.files)

  def get_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = []
    for i in indices:
      with Image.open(self.files[int(i)]) as image:
        image = image.convert('RGB')
        scale = self.image_size * 1.14 / min(image.size)
        width, height = (max(self.image_size, round(s * scale)) for s in image.size)
        left, top = (width - self.image_size) // 2, (height - self.image_size) // 2
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        images.append(np.asarray(image.crop(
            (left, top, left + self.image_size, top + self.image_size)), np.uint8))
    return np.stack(images), np.zeros(len(indices), np.int32)


def seconds_and_cpu_per_batch(batches: Iterator, warmup: int,
                              timed: int) -> tuple[float, float]:
  """Wall seconds and CPU seconds (this process and its children) per batch of a newly
  opened pipeline, after its workers started and `warmup` batches; closes it."""
  try:
    for _ in range(warmup):
      next(batches)
    processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
    cpu_start, start = _cpu_seconds(processes), time.perf_counter()
    for _ in range(timed):
      next(batches)
    return (time.perf_counter() - start) / timed, (_cpu_seconds(processes)
                                                    - cpu_start) / timed
  finally:
    batches.close()


def _cpu_seconds(processes: list[psutil.Process]) -> float:
  total = 0.0
  for process in processes:
    try:
      total += sum(process.cpu_times()[:2])
    except psutil.NoSuchProcess:  # A helper that ended meanwhile.
      pass
  return total


def measure_here(smoke: bool) -> list[common.Entry]:
  """Entries: 1 and 2 workers against the old pipeline, and 2 workers against 1.

  Each round opens each pipeline anew, times it alone and closes it (an open pipeline's
  workers would fill their buffers while another is timed).
  """
  count, size, image_size, batch, warmup, timed, rounds = SMOKE if smoke else FULL
  root = jpeg_folder(count, size)
  config = base.get_base_config().data
  config.update(source='folder', path=str(root), per_example=True, image_size=image_size,
                eval_resize=round(image_size * 256 / 224), test_split='validation')
  common_args = dict(batch_size=batch, seed=0, start_step=0, crop_padding=0, flip=True)
  sources = {}
  for workers in (1, 2):
    config.workers = workers
    sources[workers] = data.load_dataset(config).train
  sources[0] = WholeDecode(sources[1].images.files, image_size)
  measured = {k: [] for k in sources}
  for _ in range(rounds):
    for key, source in sources.items():
      measured[key].append(seconds_and_cpu_per_batch(
          data.train_batches(source, **common_args), warmup, timed))
  seconds = {k: statistics.median(s for s, _ in m) for k, m in measured.items()}
  extra = {}
  for key, label in ((0, 'old'), (1, '1_worker'), (2, '2_workers')):
    extra[f'images_per_s_{label}'] = batch / seconds[key]
    extra[f'cpu_ms_per_image_{label}'] = 1e3 * statistics.median(
        c for _, c in measured[key]) / batch
  old_name = f'imagenet_pipeline/old_one_thread/b{batch}'
  return [
      common.entry(f'imagenet_pipeline/1_worker/b{batch}', seconds[1], old_name,
                   seconds[0], None, **extra),
      common.entry(f'imagenet_pipeline/2_workers/b{batch}', seconds[2], old_name,
                   seconds[0], 1 / 3, **extra),
      common.entry(f'imagenet_pipeline/2_vs_1_workers/b{batch}', seconds[2],
                   f'imagenet_pipeline/1_worker/b{batch}', seconds[1], 1 / 1.7, **extra),
  ]


_MARK = 'imagenet_pipeline entries: '


def measure(smoke: bool) -> list[common.Entry]:
  """`measure_here` in a fresh Python process (nothing another benchmark left behind
  shares the cores); its result is the line starting with _MARK."""
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      filter(None, (str(_ROOT), os.environ.get('PYTHONPATH'))))}
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.imagenet_pipeline', *(['--smoke'] * smoke)],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
  lines = [l for l in result.stdout.splitlines() if l.startswith(_MARK)]
  if result.returncode or not lines:
    raise RuntimeError(f'benchmarks/imagenet_pipeline.py exited {result.returncode} '
                       f'without its entries:\n{result.stderr[-4000:]}')
  return json.loads(lines[-1].removeprefix(_MARK))


if __name__ == '__main__':
  print(_MARK + json.dumps(measure_here('--smoke' in sys.argv[1:])))
