"""Reads the project's markdown pages (README.md, docs/*.md) the way tests need them.

Tests that run documented code take it from here, so a page that moves or loses a
section fails the test with the page and heading named, instead of running nothing.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = (ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md')))

_HEADING = re.compile(r'(#{1,6}) +(.*?) *#* *$')
_FENCE = re.compile(r' {0,3}(```|~~~)')


def prose_lines(text: str) -> list[tuple[int, str]]:
  """(line number, line) of every line outside fenced code blocks."""
  lines, fence = [], None
  for number, line in enumerate(text.splitlines(), 1):
    opening = _FENCE.match(line)
    if fence is None and opening:
      fence = opening.group(1)
    elif fence is not None and line.strip().startswith(fence):
      fence = None
    elif fence is None:
      lines.append((number, line))
  return lines


def headings(text: str) -> list[tuple[int, int, str]]:
  """(line number, level, title) of every heading outside fenced code blocks."""
  found = []
  for number, line in prose_lines(text):
    match = _HEADING.fullmatch(line)
    if match:
      found.append((number, len(match.group(1)), match.group(2)))
  return found


def section(page: str, heading: str) -> str:
  """The text under `heading` in `page` (a path from the repository root), up to the next
  heading of the same or a higher level."""
  text = (ROOT / page).read_text()
  found = headings(text)
  starts = [(number, level) for number, level, title in found if title == heading]
  assert len(starts) == 1, f'{page}: {len(starts)} headings {heading!r} (expected one)'
  start, level = starts[0]
  end = min([number for number, other, _ in found if number > start and other <= level],
            default=len(text.splitlines()) + 1)
  return '\n'.join(text.splitlines()[start:end - 1]) + '\n'


def code_blocks(page: str, heading: str, language: str = 'python') -> list[str]:
  """The ```language blocks of one section of `page`, as written."""
  return re.findall(rf'^```{language}\n(.*?)^```', section(page, heading), re.S | re.M)


def marked_block(page: str, marker: str) -> str:
  """The fenced code block right after the comment `<!-- marker -->` in `page`."""
  text = (ROOT / page).read_text()
  match = re.search(rf'<!-- {re.escape(marker)} -->\n```\w*\n(.*?)^```', text, re.S | re.M)
  assert match, f'{page}: no code block after <!-- {marker} -->'
  return match.group(1)


def anchor(title: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r'[^\w\- ]', '', title.lower()).replace(' ', '-')


def anchors(text: str) -> set[str]:
  """Every heading anchor of a page, repeated titles numbered -1, -2, ... as GitHub does."""
  seen: dict[str, int] = {}
  found = set()
  for _, _, title in headings(text):
    base = anchor(title)
    found.add(base if base not in seen else f'{base}-{seen[base]}')
    seen[base] = seen.get(base, 0) + 1
  return found


_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?: +"[^"]*")?\)')


def broken_links(path: Path) -> list[str]:
  """The relative links of a markdown file (outside code) whose file or anchor is missing."""
  text = path.read_text()
  broken = []
  for number, line in prose_lines(text):
    for target in _LINK.findall(re.sub(r'`[^`]*`', '', line)):
      if re.match(r'[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto: ...
        continue
      file_part, _, fragment = target.partition('#')
      linked = (path.parent / file_part).resolve() if file_part else path
      where = f'{path.name}:{number}: {target}'
      if not linked.exists():
        broken.append(f'{where} (no file {linked})')
      elif fragment and linked.suffix == '.md' and fragment not in anchors(linked.read_text()):
        broken.append(f'{where} (no heading #{fragment} in {linked.name})')
  return broken
