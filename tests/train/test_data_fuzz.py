"""Corrupted archives fed to the folder/tar loader: a clear error naming the file, or
data; never another exception, a write outside the cache directory, or pickle."""

import io
import os
import pickle
import re
import tarfile
import tempfile
from pathlib import Path

import hypothesis
import ml_collections
import numpy as np
import pytest
from hypothesis import strategies as st
from PIL import Image

from configs import base
from train import data

SETTINGS = hypothesis.settings(deadline=None, max_examples=int(os.environ.get('FUZZ_EXAMPLES', '150')),
                               suppress_health_check=[hypothesis.HealthCheck.too_slow,
                                                      hypothesis.HealthCheck.function_scoped_fixture])


def image_bytes(value: int, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.new('RGB', (8, 8), (value, 255 - value, 7)).save(buffer, format=fmt)
  return buffer.getvalue()


def file_member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  return info, payload


def valid_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
  """root/{train,test}/{a,b}/{0.png,1.jpg}."""
  return [file_member(f'root/{split}/{cls}/{i}.{ext}', image_bytes(40 * i + j, fmt))
          for split in ('train', 'test') for j, cls in enumerate('ab')
          for i, (ext, fmt) in enumerate((('png', 'PNG'), ('jpg', 'JPEG')))]


def bad_member(kind: str, escape: str) -> tuple[tarfile.TarInfo, bytes | None]:
  """A member of `kind`; `escape` is an absolute path no member may write to."""
  if kind in ('symlink', 'hardlink'):
    info = tarfile.TarInfo('root/train/a/link.png')
    info.type = tarfile.SYMTYPE if kind == 'symlink' else tarfile.LNKTYPE
    info.linkname = escape
    return info, None
  if kind in ('fifo', 'device', 'directory'):
    info = tarfile.TarInfo('root/train/a/odd.png')
    info.type = {'fifo': tarfile.FIFOTYPE, 'device': tarfile.CHRTYPE,
                 'directory': tarfile.DIRTYPE}[kind]
    return info, None
  names = {'parent': '../escaped.png', 'inner_parent': 'root/train/../../escaped.png',
           'absolute': escape, 'shallow': 'train/a/9.png',
           'garbage_image': 'root/train/a/9.png', 'text_as_image': 'root/test/b/9.jpg',
           'empty_image': 'root/train/b/9.png'}
  payload = {'garbage_image': b'\x89PNG\r\n\x1a\n' + b'\x00' * 40,
             'text_as_image': b'not a jpeg', 'empty_image': b''}.get(kind,
                                                                   image_bytes(9, 'PNG'))
  return file_member(names[kind], payload)


BAD_MEMBERS = ('symlink', 'hardlink', 'fifo', 'device', 'directory', 'parent',
               'inner_parent', 'absolute', 'shallow', 'garbage_image', 'text_as_image',
               'empty_image')


def write_archive(path: Path, members, compression: str) -> bytes:
  with tarfile.open(path, f'w:{compression}') as tar:
    for info, payload in members:
      tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
  return path.read_bytes()


@st.composite
def damage(draw: st.DrawFn):
  """A function that damages archive bytes: truncation, bit flips or overwritten bytes."""
  kind = draw(st.sampled_from(('truncate', 'flip', 'overwrite', 'none')))
  fraction = draw(st.floats(0.0, 1.0))
  if kind == 'truncate':
    return lambda raw: raw[:int(fraction * len(raw))]
  if kind == 'flip':
    bits = draw(st.lists(st.tuples(st.floats(0.0, 0.9999), st.integers(0, 7)),
                         min_size=1, max_size=8))

    def flip(raw: bytes) -> bytes:
      out = bytearray(raw)
      for where, bit in bits:
        out[int(where * len(out))] ^= 1 << bit
      return bytes(out)
    return flip
  if kind == 'overwrite':
    junk = draw(st.binary(min_size=1, max_size=64))
    return lambda raw: (raw[:int(fraction * len(raw))] + junk
                        + raw[int(fraction * len(raw)) + len(junk):])
  return lambda raw: raw


def loader_config(path: Path, cache: Path) -> ml_collections.ConfigDict:
  """The base config's data section (every key the loaders read) for `path`."""
  config = base.get_base_config().data
  config.update({'source': 'folder', 'path': str(path), 'cache_dir': str(cache),
                 'image_size': 8, 'train_split': 'train', 'test_split': 'test',
                 'held_out': 0})
  return config


def files_under(root: Path, skip: Path) -> set[Path]:
  return {Path(d) / n for d, _, names in os.walk(root) if not d.startswith(str(skip))
          for n in names}


@pytest.fixture(autouse=True)
def no_pickle(monkeypatch):
  """Any unpickling by the loader fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError('the data loader unpickled something')
  for name in ('load', 'loads', 'Unpickler'):
    monkeypatch.setattr(pickle, name, refuse)


@SETTINGS
@hypothesis.given(compression=st.sampled_from(('', 'gz')),
                  bad=st.lists(st.sampled_from(BAD_MEMBERS), max_size=2),
                  where=st.integers(0, 8), damage=damage())
def test_corrupted_archives_fail_clearly_and_safely(compression, bad, where, damage):
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    (root / 'in').mkdir()
    escape = root / 'escaped.png'
    members = valid_members()
    for kind in bad:
      members.insert(min(where, len(members)), bad_member(kind, str(escape)))
    suffix = '.tar.gz' if compression else '.tar'
    path = root / 'in' / f'data{suffix}'
    path.write_bytes(damage(write_archive(root / f'clean{suffix}', members, compression)))
    before = files_under(root, root / 'cache')
    config = loader_config(path, root / 'cache')
    cwd = os.getcwd()
    os.chdir(root / 'in')  # A relative '../escaped.png' would land in `root`.
    try:
      dataset = data.load_dataset(config)
    except (ValueError, OSError) as error:
      message = re.sub(r"'[^']*'|/\S+|\d+", '_', str(error))  # Its kind, for statistics.
      hypothesis.event(f'{type(error).__name__}: {message[:70]}')
      assert str(path) in str(error), f'{type(error).__name__} does not name the file: {error}'
    else:  # Harmless damage, e.g. in padding: the data is whole.
      hypothesis.event('loaded')
      assert dataset.train.images.shape[1:] == (8, 8, 3)
      assert set(dataset.class_names) <= {'a', 'b'}
    finally:
      os.chdir(cwd)
    assert files_under(root, root / 'cache') == before
    cached = list((root / 'cache').glob('*')) if (root / 'cache').exists() else []
    assert all(f.suffix == '.npz' for f in cached), cached  # No stray temporary file.
    assert not escape.exists() and not (root / 'in' / 'escaped.png').exists()


def test_a_corrupt_cache_file_is_rebuilt_without_unpickling(tmp_path):
  """An object array (a pickle) or garbage in place of the cache: decoded again."""
  path = tmp_path / 'data.tar'
  write_archive(path, valid_members(), '')
  config = loader_config(path, tmp_path / 'cache')
  expected = data.load_dataset(config)
  (cache_file,) = (tmp_path / 'cache').iterdir()
  for bad in ('pickle', 'garbage'):
    if bad == 'pickle':
      np.savez(cache_file.with_suffix(''), train_images=np.array([object()]))
    else:
      cache_file.write_bytes(b'PK\x03\x04 not a zip')
    loaded = data.load_dataset(config)
    np.testing.assert_array_equal(loaded.train.images, expected.train.images)
    assert list((tmp_path / 'cache').iterdir()) == [cache_file]
