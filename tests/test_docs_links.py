"""Every relative link of README.md and docs/*.md reaches an existing file and heading."""

import pytest

from tests import markdown_docs


@pytest.mark.parametrize('page', markdown_docs.PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
  assert markdown_docs.broken_links(page) == []


def test_anchors_follow_github():
  text = '\n'.join(['# Exported models: the files', '## C2S2 on CIFAR-10 (cpu preset)',
                    '## `manifest.json`', '```bash', '# not a heading', '```',
                    '## Readings', '### Readings'])
  assert markdown_docs.anchors(text) == {
      'exported-models-the-files', 'c2s2-on-cifar-10-cpu-preset', 'manifestjson',
      'readings', 'readings-1'}


def test_broken_links_are_reported(tmp_path):
  (tmp_path / 'other.md').write_text('# Present heading\n')
  page = tmp_path / 'page.md'
  page.write_text('\n'.join([
      '# Top', '[ok](other.md#present-heading) [self](#top) [web](https://example.org)',
      '[gone](missing.md) [bad anchor](other.md#absent) `[code](nowhere.md)`',
      '```', '[in a fence](nowhere.md)', '```', '![image](other.md#top)']))
  assert markdown_docs.broken_links(page) == [
      f'page.md:3: missing.md (no file {tmp_path / "missing.md"})',
      'page.md:3: other.md#absent (no heading #absent in other.md)',
      'page.md:7: other.md#top (no heading #top in other.md)']
