"""A table's results: records of its finished rows, and NAME.md, .csv, .json, .png.

The reproduction harness (train/reproduce.py) runs the rows; this module reads what
they left (summaries, configs, attempts, C2S2 decisions), times their models side by
side, and writes the files under `--results`.
"""

import csv
import hashlib
import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

import ml_collections

from train import provenance, tables
from train import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DEFAULT = 'results'
LATENCY_KEYS = ('latency_ms', 'dense_latency_ms', 'latency_batch')


def previous_records(directory: str, table_name: str,
                     preset: str = '') -> dict[tuple[str, int], dict]:
  """The rows recorded by earlier reproductions in `directory`: the table's own
  (`NAME.json`), then rows of the other tables of `preset` (rows of the same name and
  preset are one run, e.g. a start both tables share)."""
  found = {}
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
    path = os.path.join(directory, name)
    if not name.endswith('.json') or name == table_name + '.json':
      continue
    results = workdir_lib.read_record(path)
    if isinstance(results, dict) and preset and results.get('preset') == preset:
      found.update({(r['row'], r['seed']): r for r in results.get('rows', [])})
  path = os.path.join(directory, table_name + '.json')
  if os.path.exists(path):
    found.update({(r['row'], r['seed']): r for r in workdir_lib.read_json(path)['rows']})
  return found


def measure_latencies(models_of: dict[str, tuple[dict, dict[str, int]]],
                      batch_size: int) -> dict[str, float]:
  """Median ms of each entry's inference forward pass, all timed interleaved.

  Args:
    models_of: key -> (config dict, widths) of the model to time; entries with the
      same model and widths share one measurement.
    batch_size: images per forward pass.
  """
  from train import data, models, report  # Imports JAX: only when needed.
  unique, keys, shape = {}, {}, None
  for name, (config, widths) in models_of.items():
    key = json.dumps([config['model'], config['data'], widths], sort_keys=True)
    keys[name] = key
    if key not in unique:
      data_config = ml_collections.ConfigDict(config['data'])
      dataset = data.load_dataset(data_config)
      shape = dataset.image_shape
      unique[key] = models.build_model(config['model']['name'], dataset.num_classes,
                                       widths=widths, shortcut=config['model']['shortcut'])
  if not unique:
    return {}
  seconds = report.forward_latency(unique, shape, batch_size)
  return {name: 1e3 * seconds[key] for name, key in keys.items()}


def records(table: tables.Table, statuses: list[dict[str, Any]],
            prior: dict[tuple[str, int], dict]) -> list[dict[str, Any]]:
  """One record per finished or recorded (row, seed): provenance, config, summary."""
  rows = {r.name: r for r in table.rows}
  out = []
  for status in statuses:
    if status['status'] == 'recorded':
      record = dict(prior[(status['row'], status['seed'])])
      record['start_from'] = rows[status['row']].start_from  # The table's start now.
      record['wall_time_s'] = max(record['wall_time_s'], record['summary']['wall_time_s'])
      out.append(record)
      continue
    if status['status'] != 'finished':
      continue
    workdir = status['workdir']
    summary = workdir_lib.read_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE))
    attempts_path = os.path.join(workdir, workdir_lib.ATTEMPTS_FILE)
    attempts = workdir_lib.read_json(attempts_path) if os.path.exists(attempts_path) else []
    row = rows[status['row']]
    decisions_path = os.path.join(workdir, workdir_lib.DECISIONS_FILE)
    start_path = os.path.join(workdir, workdir_lib.START_FILE)
    out.append({
        'row': row.name, 'label': row.label, 'method': row.method, 'seed': status['seed'],
        'start_from': row.start_from, 'workdir': workdir,
        'revision': summary.get('revision', 'unknown'),
        'hardware': summary.get('hardware', {'platform': summary.get('platform')}),
        'wall_time_s': wall_time(attempts, summary),
        'config': workdir_lib.read_json(os.path.join(workdir, workdir_lib.CONFIG_FILE)),
        'widths': workdir_lib.read_json(os.path.join(workdir, workdir_lib.WIDTHS_FILE)),
        'summary': summary,
        **({'cost_check': workdir_lib.read_jsonl(decisions_path)}
           if os.path.exists(decisions_path) else {}),
        **({'start': workdir_lib.read_json(start_path)}
           if os.path.exists(start_path) else {}),
    })
  return out


def summary_digest(summary: dict[str, Any]) -> str:
  """A short fingerprint of a finished run (its summary.json content)."""
  return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]


def other_start_row(start: dict[str, Any] | None, start_from: str) -> str:
  """Why a run that started from `start` (its start.json; None: no record) is not one
  from row `start_from`, the table's start for its row now ('' if it is, or unknown)."""
  if not start or start['row'] == start_from:
    return ''
  return (f'started from row {start["row"]}; the table starts it from '
          f'{"row " + start_from if start_from else "scratch"} now')


def changed_start(record: dict[str, Any], recs: list[dict[str, Any]]) -> str:
  """Why `record` no longer follows from the table's run of its start row ('' if it
  does, or if it records no start): the table starts the row from another row now, or
  that row has been run again since (e.g. after a config change) and this row was
  kept."""
  start = record.get('start')
  if not start:
    return ''
  if other := other_start_row(start, record['start_from']):
    return other
  for r in recs:
    if (r['row'], r['seed']) == (start['row'], start['seed']):
      if summary_digest(r['summary']) != start['summary_digest']:
        return (f'started from another run of {start["row"]} (seed {start["seed"]}) than '
                'the one in this table')
      return ''
  return ''


def wall_time(attempts: list[dict[str, Any]], summary: dict[str, Any]) -> float:
  """A row's seconds: its attempts under the harness, summed, but at least the run's
  own count across its resumptions (attempts started outside the harness, or before
  it kept an attempts file, are only in the latter)."""
  return max(sum(a['seconds'] for a in attempts), summary['wall_time_s'])


def latencies_current(recs: list[dict[str, Any]], prior: dict[tuple[str, int], dict],
                      batch_size: int) -> bool:
  """Whether every record is the recorded run with its latency at `batch_size`.

  Then no finished row changed since the rows were last timed side by side (a row that
  ran again has a new summary), and timing them again would only spend minutes.
  """
  def current(r):
    before = prior.get((r['row'], r['seed']))
    return (before is not None and before.get('summary') == r['summary'] and
            before.get('latency_batch') == batch_size and 'latency_ms' in before)
  return bool(recs) and all(map(current, recs))


def add_latencies(table: tables.Table, recs: list[dict[str, Any]], batch_size: int) -> None:
  """Sets `latency_ms` of every record and the first row's as `dense_latency_ms`."""
  ms = measure_latencies({f'{r["row"]}/{r["seed"]}': (r['config'], r['widths'])
                          for r in recs}, batch_size)
  for r in recs:
    r['latency_ms'] = ms[f'{r["row"]}/{r["seed"]}']
  dense = {r['seed']: r['latency_ms'] for r in recs if r['row'] == table.rows[0].name}
  for r in recs:
    r['dense_latency_ms'] = dense.get(r['seed'], dense.get(0))
    r['latency_batch'] = batch_size


def _cell(values: list[float | str | None], fmt: str) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  if isinstance(values[0], str):  # One value if the seeds agree, else each in seed order.
    return values[0] if len(set(values)) == 1 else ', '.join(values)
  if len(values) == 1:
    return fmt.format(values[0])
  return (f'{fmt.format(statistics.mean(values))} ± '
          f'{fmt.format(statistics.stdev(values))} (n={len(values)})')


def is_default_results(results: str) -> bool:
  """True for the `results` folder at the root of a checkout of this project (the
  default, whichever checkout or worktree the harness ran from)."""
  path = Path(results).resolve()
  return results == RESULTS_DEFAULT or (
      path.name == RESULTS_DEFAULT and (path.parent / 'train' / 'reproduce.py').is_file())


def markdown(table: tables.Table, preset: str, recs: list[dict[str, Any]],
             statuses: list[dict[str, Any]], seeds: int, head: str,
             results: str = 'results') -> str:
  """The table as Markdown: mean (and spread over seeds) per row, stale rows marked,
  then what is missing. `head`: the revision writing the table."""
  header = ['row', *[c.header for c in table.columns]]
  lines = [f'# {table.title}', '', table.notes.strip(), '',
           f'Command: `python -m train.reproduce --table={table.name} --preset={preset}'
           f'{f" --seeds={seeds}" if seeds > 1 else ""}'
           f'{"" if is_default_results(results) else f" --results={results}"}`', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in table.rows:
    mine = [r for r in recs if r['row'] == row.name]
    if mine:
      cells = [_cell([c.value(r) for r in mine], c.fmt) for c in table.columns]
      mark = ' (stale)' if any(r.get('stale') for r in mine) else ''
      lines.append(f'| {row.label}{mark} | ' + ' | '.join(cells) + ' |')
  for r in recs:
    trace = tables.cost_check_trace(r) if r['seed'] == 0 else []
    if trace:
      lines += ['', f'C2S2 cost check of {r["row"]} (seed 0; kept/channels per layer at '
                'each decision, held-out metric, action):', '']
      lines += [f'- {line}' for line in trace]
  comparisons = tables.seed_comparisons([
      (row.label, [r['summary']['top1'] for r in recs if r['row'] == row.name
                   and r['summary'].get('top1') is not None]) for row in table.rows])
  if comparisons:
    lines += ['', 'Rows with seeds, pairwise (a gap larger than the combined std of the '
              'seeds is called real):', '']
    lines += [f'- {line}' for line in comparisons]
  stale = [r for r in recs if r.get('stale')]
  if stale:
    lines += ['', f'(stale): the run no longer matches revision {head[:12]}, which wrote '
              'this table (changed code: `--rerun=stale` runs it again; a changed config '
              'or start row: the table\'s command does):', '']
    lines += [f'- {r["row"]} (seed {r["seed"]}): {r["stale"]}' for r in stale]
  unkept = [s for s in statuses if s['status'] == 'finished' and s['detail']]
  if unkept:
    lines += ['', 'Finished, with a problem:', '']
    lines += [f'- {s["row"]} (seed {s["seed"]}): {s["detail"]}' for s in unkept]
  missing = [s for s in statuses if s['status'] not in ('finished', 'recorded')]
  if missing:
    lines += ['', 'Not finished:', '']
    lines += [f'- {s["row"]} (seed {s["seed"]}): {s["status"]}'
              f'{": " + s["detail"] if s["detail"] else ""}' for s in missing]
  revisions = sorted({r['revision'][:12] for r in recs})
  hardware = sorted({f'{r["hardware"].get("devices", "?")} x '
                     f'{r["hardware"].get("device_kind", r["hardware"].get("platform"))}'
                     f' ({r["hardware"].get("cpu", "?")})' for r in recs})
  lines += ['', f'Revisions: {", ".join(revisions) or "-"}. Hardware: '
            f'{"; ".join(hardware) or "-"}. Per row: `{table.name}.json` (full config, '
            'summary, seed, wall time) and `.csv`.']
  return '\n'.join(lines) + '\n'


def write_csv(path: str, table: tables.Table, recs: list[dict[str, Any]]) -> None:
  text = io.StringIO(newline='')
  writer = csv.writer(text)
  writer.writerow(['row', 'label', 'method', 'seed', *[c.header for c in table.columns],
                   'revision', 'hardware', 'workdir'])
  for r in recs:
    writer.writerow([r['row'], r['label'], r['method'], r['seed'],
                     *[c.value(r) for c in table.columns], r['revision'],
                     json.dumps(r['hardware'], sort_keys=True), r['workdir']])
  workdir_lib.write_atomically(path, lambda f: f.write(text.getvalue()), 'w', newline='')


def plot(path: str, table: tables.Table, recs: list[dict[str, Any]]) -> None:
  """Top-1 against MACs, one marker per method."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  markers = 'o^sDvP*Xh<>p'
  fig, ax = plt.subplots(figsize=(7, 4.5))
  methods = list(dict.fromkeys(r['method'] for r in recs))
  for i, method in enumerate(methods):
    mine = [r for r in recs if r['method'] == method]
    ax.scatter([tables.macs_millions(r) for r in mine], [r['summary']['top1'] for r in mine],
               marker=markers[i % len(markers)], label=method, s=50)
  ax.set_xlabel('MACs per image (M)')
  ax.set_ylabel('test top-1')
  ax.set_title(table.title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  workdir_lib.write_atomically(path, lambda f: fig.savefig(f, format='png', dpi=120),
                               'wb')
  plt.close(fig)


def write_results(table: tables.Table, preset: str, recs: list[dict[str, Any]],
                  statuses: list[dict[str, Any]], seeds: int, directory: str) -> str:
  """Writes NAME.md, .csv, .json and .png (if any row finished); returns the .md path."""
  os.makedirs(directory, exist_ok=True)
  base = os.path.join(directory, table.name)
  workdir_lib.write_json(base + '.json', {'table': table.name, 'preset': preset,
                                          'rows': recs, 'statuses': statuses})
  write_csv(base + '.csv', table, recs)
  if recs:
    plot(base + '.png', table, recs)
  workdir_lib.write_text(base + '.md', markdown(
      table, preset, recs, statuses, seeds, provenance.revision(),
      os.path.relpath(directory, REPO)))
  return base + '.md'
