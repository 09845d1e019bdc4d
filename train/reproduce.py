r"""Runs every row of a comparison table and writes its results.

  python -m train.reproduce --table=cifar10_cci --preset=cpu [--seeds=3] [--rerun=stale]

Each row is `main.py` with the row's config and overrides, in its own process and
workdir `ROOT/PRESET/ROW` (seed s > 0: `ROOT/PRESET/seedS/ROW`), with its log beside
it (`ROW.log`). Each row runs its table's `seeds`, at least `--seeds` unless other rows
start from it: their further seeds fine-tune from its seed 0, never from a retrained
pre-training (raise that row's `seeds` in the table for that). A row whose workdir holds a `summary.json` is finished and skipped, so
rerunning the command continues an interrupted reproduction; a row whose run fails is
reported and the others go on (rows starting from it are blocked). Rows of any table
with the same name share one run, e.g. the dense pre-training. A row already recorded
in `RESULTS/NAME.json` with the same config is kept without its workdir (rerun only if
a later row must start from it), so the results files carry a reproduction across
machines that do not keep `ROOT`. `--rerun=stale` runs again every row whose code differs
from HEAD (the files under `provenance.CODE_PATHS` its run imported, config files aside,
by git blob hash; for older records without that list, every file under those paths),
`--rerun=all` every row (a finished workdir is moved aside to `ROW.replaced-TIME`, never
deleted); rows starting from a row run again are run again too. The tables mark the
stale rows they hold, and the rows kept although the run they started from was run
again (`START_FILE`). At the end the inference latency of every finished row's model is
measured side by side in this process (a rerun in which no finished row changed keeps
the recorded times unless `--remeasure_latency`; `--report_only` times nothing
unless asked, since it may run beside training), and `RESULTS/NAME.md`, `.csv`, `.json`
(per row: git revision, full config, hardware, wall time, seed, summary, C2S2's
cost-check decisions) and `.png` (top-1 against MACs, one marker per method) are written.
`--park` runs nothing: it copies each unfinished row with its newest checkpoint to
`RESULTS/parked`, and the row's next run on any machine resumes from there
(train/parking.py): a row longer than a session then finishes across machines.
"""

import importlib
import importlib.util
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

from train import errors, parking, provenance, saved_config, table_results, tables
from train import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TABLE = flags.DEFINE_string('table', None, 'A table in configs/tables, or a table file.')
_PRESET = flags.DEFINE_enum('preset', 'cpu', tables.PRESETS, 'Which schedule.')
_SEEDS = flags.DEFINE_integer(
    'seeds', 1, 'Seeds 0..N-1 of every row no other row starts from (a start row, '
    'e.g. the dense pre-training, runs the seeds its table row declares).')
_ROOT = flags.DEFINE_string('root', 'runs/reproduce', 'Where the rows run.')
_RESULTS = flags.DEFINE_string('results', table_results.RESULTS_DEFAULT,
                                'Where the result files go.')
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'KEY=VALUE added to every row (e.g. data.data_dir=/data).')
_ONLY = flags.DEFINE_list('only', [], 'Run only these rows (and report all finished).')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Run nothing and time nothing (unless --remeasure_latency); '
    'write the results.')
_LATENCY_BATCH = flags.DEFINE_integer('latency_batch', 128, 'Batch of the latency column.')
_REMEASURE = flags.DEFINE_bool(
    'remeasure_latency', False, 'Time every row again even if no finished row changed '
    '(e.g. on another machine); by default such a rerun keeps the recorded times.')
_RERUN = flags.DEFINE_enum(
    'rerun', 'none', RERUN_CHOICES := ('none', 'stale', 'all'),
    'none: keep finished and recorded rows; stale: run again the rows whose revision '
    'differs from HEAD in the code that produces results; all: run every row again.')
_PARK = flags.DEFINE_bool(
    'park', False, 'Run nothing: copy every unfinished row (of --only, if given) with '
    'its newest checkpoint to RESULTS/parked, where its next run on any machine resumes '
    'it (train/parking.py).')
PUBLISHED_DIR = 'checkpoints'  # Under --results: final variables of rows (publish).
PUBLISHED_FILES = (workdir_lib.CONFIG_FILE, workdir_lib.SUMMARY_FILE, workdir_lib.WIDTHS_FILE)


def load_table(name: str, preset: str) -> tables.Table:
  """`configs/tables/NAME.py` (or the file at path NAME)'s table for `preset`."""
  if name.endswith('.py'):
    spec = importlib.util.spec_from_file_location('table', name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(f'configs.tables.{name}')
    except ModuleNotFoundError as e:
      available = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'configs', 'tables'))
                         if f.endswith('.py') and not f.startswith('_'))
      raise ValueError(f'--table={name}: no such table; tables: {available}.') from e
  return module.get_table(preset)


def row_config(row: tables.Row, overrides: Sequence[str] = ()) -> Any:
  """The row's config with its overrides applied, as main.py will see it.

  Raises:
    ValueError: the config file or an override key does not exist (names the row).
  """
  path, _, arg = row.config.partition(':')
  module_name = os.path.splitext(os.path.relpath(os.path.join(REPO, path), REPO))[0]
  try:
    module = importlib.import_module(module_name.replace(os.sep, '.'))
    config = module.get_config(arg) if arg else module.get_config()
  except (ImportError, ValueError) as e:
    raise ValueError(f'Row {row.name}: config {row.config}: {e}') from e
  for key, value in [*row.overrides.items(), *(kv.split('=', 1) for kv in overrides)]:
    parent, _, leaf = key.rpartition('.')
    node = config
    for part in parent.split('.') if parent else ():
      node = node.get(part) if hasattr(node, 'get') else None
    if node is None or not hasattr(node, 'keys') or leaf not in node:
      raise ValueError(f'Row {row.name}: config {row.config} has no key {key!r}.')
    if (key, value) in row.overrides.items():
      node[leaf] = value
  return config


def row_workdir(root: str, preset: str, row: str, seed: int) -> str:
  return os.path.join(root, preset, row) if seed == 0 else os.path.join(
      root, preset, f'seed{seed}', row)


def command(row: tables.Row, workdir: str, seed: int, init_from: str,
            overrides: Sequence[str], widths: str = '') -> list[str]:
  """The `main.py` command line of one row (`widths`: its `model.widths` JSON)."""
  args = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={row.config}',
          f'--workdir={workdir}', f'--config.seed={seed}']
  if init_from:
    args.append(f'--config.init_from={init_from}')
  if widths:
    args.append(f'--config.model.widths={widths}')
  args += [f'--config.{k}={v}' for k, v in row.overrides.items()]
  return args + [f'--config.{kv}' for kv in overrides]


def finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, workdir_lib.SUMMARY_FILE))


def needs_rerun(rerun: str, summary: dict[str, Any]) -> bool:
  """Whether a finished or recorded row with this summary runs again under `rerun`."""
  return rerun == 'all' or (rerun == 'stale' and bool(provenance.stale_reason(
      summary.get('revision', 'unknown'), summary.get('code'))))


def move_aside(workdir: str) -> str:
  """Renames a finished workdir out of the way of a rerun; returns its new path."""
  aside = f'{workdir}.replaced-{time.strftime("%Y%m%d-%H%M%S")}'
  os.replace(workdir, aside)
  logging.info('Moved %s aside to %s for its rerun.', workdir, aside)
  return aside


def run_logged(args: list[str], log_path: str) -> int:
  """Runs `args` in the repository with its output appended to `log_path` after the
  command line; returns the exit code."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'a') as log:
    log.write(f'\n$ {" ".join(args)}\n')
    log.flush()
    return subprocess.run(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode


def run_row(args: list[str], workdir: str, log_path: str) -> tuple[bool, str]:
  """Runs one row to its end; returns (succeeded, the log's last lines if not).

  Every attempt, also one the harness is stopped in (exit code null), is appended to
  the workdir's attempts file: their seconds sum to the row's wall time.
  """
  start, code = time.time(), None
  try:
    code = run_logged(args, log_path)
  finally:
    attempts_path = os.path.join(workdir, workdir_lib.ATTEMPTS_FILE)
    if os.path.isdir(workdir):
      attempts = (workdir_lib.read_json(attempts_path) if os.path.exists(attempts_path)
                  else [])
      workdir_lib.write_json(attempts_path, attempts + [
          {'seconds': time.time() - start, 'exit_code': code, 'ended': time.ctime()}])
  if code == 0 and finished(workdir):
    return True, ''
  with open(log_path) as f:
    tail = ''.join(f.readlines()[-5:]).strip()
  return False, f'exit code {code}: {tail}'


def same_config(row: tables.Row, record: dict[str, Any], overrides: Sequence[str]) -> bool:
  """Whether a recorded run is this row's (ignoring paths, run-control keys and the
  widths a row takes from its start)."""
  expected = row_config(row, overrides).to_dict()
  expected['seed'] = record['seed']
  ignored = {'init_from', *(kv.split('=', 1)[0] for kv in overrides),
             *(['model.widths'] if row.widths_from_start else [])}
  return not [k for k in saved_config.config_differences(record['config'], expected)
              if k not in ignored]


def runs_row(row: tables.Row, workdir: str, seed: int, overrides: Sequence[str]) -> bool:
  """Whether the run in `workdir` is this row's: its config (a workdir left by another
  config of the row, e.g. an earlier preset's, is not) and the row it started from."""
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    return False
  start_path = os.path.join(workdir, workdir_lib.START_FILE)
  matches = same_config(row, {'config': workdir_lib.read_json(path), 'seed': seed},
                        overrides) and not table_results.other_start_row(
      workdir_lib.read_json(start_path) if os.path.exists(start_path) else None,
      row.start_from)
  if not matches:
    logging.warning('%s holds a run of another config or start than row %s: it runs '
                    'again.', workdir, row.name)
  return matches


def row_seeds(table: tables.Table, row: tables.Row, seeds: int) -> int:
  """How many seeds `row` runs: its own count, at least `seeds` unless another row
  of `table` starts from it (further seeds of those rows start from its seed 0, so
  `--seeds` never retrains a pre-training; a table row's `seeds` does)."""
  if any(r.start_from == row.name for r in table.rows):
    return row.seeds
  return max(row.seeds, seeds)


def published_dir(results: str, preset: str, row: str, seed: int) -> str:
  """Where a finished row's final variables are kept with the results."""
  return os.path.join(results, PUBLISHED_DIR, preset, row if seed == 0 else
                      f'{row}.seed{seed}')


def publish(workdir: str, destination: str, variables: bool, packed: bool) -> None:
  """Keeps a finished row's model and records in `destination`.

  Args:
    workdir: the finished run.
    destination: written beside and renamed into place, so no reader sees half of it.
    variables: keep its final params and batch stats as a variables-only workdir
      (`config.init_from` can point at it; a channel row's are the compact model's).
    packed: keep the CCI model as `main.py --mode=export` packs it (`cci_packed.npz`:
      values and indices, batch norms folded) with the export's manifest (its test
      top-1, preprocessing and widths).

  Raises:
    RuntimeError: the export failed (names its log).
    errors.UserError: the run's latest checkpoint is missing or damaged.
  """
  from train import checkpoints  # Imports JAX: only when a row is published.
  partial = destination + '.partial'
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  if variables:
    checkpoints.save_variables(workdir, partial)
  if packed:
    args = [sys.executable, os.path.join(REPO, 'main.py'), '--mode=export',
            f'--workdir={workdir}', '--format=stablehlo']
    if run_logged(args, workdir + '.log'):
      raise RuntimeError(f'Exporting {workdir} failed: see {workdir}.log.')
    for name in (workdir_lib.PACKED_FILE, workdir_lib.MANIFEST_FILE):
      shutil.copy2(os.path.join(workdir, workdir_lib.EXPORT_DIR, name), partial)
  for name in PUBLISHED_FILES:
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy2(os.path.join(workdir, name), partial)
  if os.path.exists(destination):
    shutil.rmtree(destination)
  os.replace(partial, destination)
  logging.info('Kept the final model of %s in %s.', workdir, destination)


def published_current(destination: str, summary: dict[str, Any]) -> bool:
  """Whether `destination` holds the model of the run whose summary is `summary`."""
  path = os.path.join(destination, workdir_lib.SUMMARY_FILE)
  return os.path.exists(path) and workdir_lib.read_json(path) == summary


def run_table(table: tables.Table, preset: str, seeds: int, root: str,
              overrides: Sequence[str], only: Sequence[str] = (),
              prior: dict[tuple[str, int], dict] | None = None,
              rerun: str = 'none', results: str = '',
              on_finished: Callable[[list[dict[str, Any]]], None] | None = None,
              ) -> list[dict[str, Any]]:
  """Runs the unfinished (row, seed) pairs; returns each one's status.

  Seed 0 of every row runs first, then the further seeds of the rows that have them
  (`row_seeds`). A pair recorded in `prior` with the same config counts as done
  ('recorded') unless another row must start from it and its variables are not kept
  in `results` (`published_dir`): then it runs again. A finished workdir whose config
  differs from the row's is moved aside and run again. `rerun` ('stale', 'all') runs
  finished and recorded pairs again (`needs_rerun`), and every pair starting from one
  that ran in this call. With `results`, the final variables of every row's seed 0 and
  of every pair another row starts from are kept there; `on_finished(statuses)` is
  called after every pair that ran, so results are written as they come.
  """
  rows, prior = {r.name: r for r in table.rows}, prior or {}
  failed, ran, done_status, statuses = {}, set(), {}, []
  completed = set()  # Pairs whose own run is finished: their parked copies go.

  def start_seed(row: tables.Row, seed: int) -> int:
    return seed if seed < row_seeds(table, rows[row.start_from], seeds) else 0

  starts = {(r.start_from, start_seed(r, s)) for r in table.rows if r.start_from
            for s in range(row_seeds(table, r, seeds))}

  def outdated(row: tables.Row, seed: int, summary: dict[str, Any]) -> bool:
    return (row.name, seed) not in ran and (needs_rerun(rerun, summary) or (
        rerun != 'none' and bool(row.start_from) and
        (row.start_from, start_seed(row, seed)) in ran))

  def keep(row: tables.Row, seed: int, workdir: str) -> str:
    """Publishes seed 0 of every row (CCI packed) and every pair a row starts from;
    returns why it could not ('' if it did or had not to)."""
    start = (row.name, seed) in starts
    if not results or not (seed == 0 or start):
      return ''
    destination = published_dir(results, preset, row.name, seed)
    summary = workdir_lib.read_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE))
    if published_current(destination, summary):
      return ''
    sparsity = workdir_lib.read_json(
        os.path.join(workdir, workdir_lib.CONFIG_FILE))['sparsity']
    cci = sparsity['method'] != 'none' and sparsity['pattern'] == 'cci'
    try:
      publish(workdir, destination, variables=start or not cci, packed=cci and seed == 0)
    except (OSError, RuntimeError, ValueError, errors.UserError) as e:  # Goes on without.
      logging.error('%s seed %d: its model was not kept: %s', row.name, seed, e)
      return f'model not kept in {destination}: {e}'
    return ''

  def ensure(row: tables.Row, seed: int, need_start: bool) -> tuple[str, str, str]:
    """(status, detail, the folder rows starting from this pair read)."""
    if (row.name, seed) in done_status and not need_start:
      return done_status[(row.name, seed)]
    workdir = row_workdir(root, preset, row.name, seed)
    if (row.name, seed) in failed:
      return 'failed', failed[(row.name, seed)], ''
    record = prior.get((row.name, seed))
    start_path = os.path.join(workdir, workdir_lib.START_FILE)
    own = runs_row(row, workdir, seed, overrides)
    done = finished(workdir) and own
    if done and not outdated(row, seed, workdir_lib.read_json(
        os.path.join(workdir, workdir_lib.SUMMARY_FILE))):
      completed.add((row.name, seed))
      return 'finished', keep(row, seed, workdir), workdir
    recorded = (bool(record) and same_config(row, record, overrides) and
                not table_results.other_start_row(record.get('start'), row.start_from))
    published = published_dir(results, preset, row.name, seed) if results else ''
    if recorded and not outdated(row, seed, {'revision': record['revision'],
                                             **record.get('summary', {})}):
      if not need_start:
        return 'recorded', '', ''
      if published and published_current(published, record['summary']):
        return 'recorded', '', published
    if only and row.name not in only and not need_start:  # Kept as it is.
      return (('finished', '', workdir) if finished(workdir) else
              ('recorded', '', '') if recorded else ('not run', 'not in --only', ''))
    dependency, widths = '', ''
    if row.start_from:
      _, _, dependency = ensure(rows[row.start_from], start_seed(row, seed), True)
      if not dependency:
        return 'blocked', f'needs row {row.start_from}', ''
      if row.widths_from_start:
        widths = json.dumps(workdir_lib.read_json(
            os.path.join(dependency, workdir_lib.WIDTHS_FILE)))
    if finished(workdir) or (
        os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)) and not own):
      move_aside(workdir)  # An unfinished run of this row's config resumes instead.
    unpark(row, seed, workdir, {'init_from': dependency, **dict(
        kv.split('=', 1) for kv in overrides), **({'model.widths': widths} if widths else {})})
    args = command(row, workdir, seed, dependency, overrides, widths)
    if dependency and not os.path.exists(start_path):  # Which run it starts from (a
      os.makedirs(workdir, exist_ok=True)  # resumed run has started from it already).
      workdir_lib.write_json(start_path, {
          'row': row.start_from, 'seed': start_seed(row, seed),
          'summary_digest': table_results.summary_digest(workdir_lib.read_json(
              os.path.join(dependency, workdir_lib.SUMMARY_FILE)))})
    logging.info('%s seed %d: %s', row.name, seed, ' '.join(args[1:]))
    ok, detail = run_row(args, workdir, workdir + '.log')
    ran.add((row.name, seed))
    logging.log(logging.INFO if ok else logging.ERROR, '%s seed %d: %s %s', row.name,
                seed, 'finished' if ok else 'failed', detail)
    if not ok:
      failed[(row.name, seed)] = detail
      return 'failed', detail, ''
    completed.add((row.name, seed))
    return 'finished', keep(row, seed, workdir), workdir

  def unpark(row: tables.Row, seed: int, workdir: str, machine: dict[str, str]) -> None:
    """Puts the row's parked copy in place of a workdir not as far along (moved aside)
    if the copy is this row's run from the same start run (`parking.restore`)."""
    parked = parking.parked_dir(results, preset, row.name, seed) if results else ''
    if (not parked or not os.path.isdir(parked) or
        parking.progress(parked) <= parking.progress(workdir) or
        not runs_row(row, parked, seed, overrides)):
      return
    start = workdir_lib.read_record(os.path.join(parked, workdir_lib.START_FILE))
    if start and machine['init_from'] and start.get('summary_digest') != (
        table_results.summary_digest(workdir_lib.read_json(
            os.path.join(machine['init_from'], workdir_lib.SUMMARY_FILE)))):
      logging.warning('%s started from another run of row %s than %s: not resumed.',
                      parked, row.start_from, machine['init_from'])
      return
    try:
      config = parking.config_for_machine(parked, machine)
    except ValueError as e:
      logging.warning('%s', e)
      return
    if os.path.exists(workdir):
      move_aside(workdir)
    parking.restore(parked, workdir, config)
    logging.info('%s seed %d: resumes from its parked copy %s.', row.name, seed, parked)

  def pending(row: tables.Row, seed: int) -> dict[str, Any]:
    record = prior.get((row.name, seed))
    recorded = (bool(record) and same_config(row, record, overrides) and
                not table_results.other_start_row(record.get('start'), row.start_from))
    return {'row': row.name, 'seed': seed, 'status': 'recorded' if recorded else 'not run',
            'detail': '' if recorded else 'pending',
            'workdir': row_workdir(root, preset, row.name, seed)}

  pairs = sorted(((s, i) for i, r in enumerate(table.rows)
                  for s in range(row_seeds(table, r, seeds))))
  for seed, index in pairs:
    row = table.rows[index]
    status, detail, _ = ensure(row, seed, need_start=False)
    done_status[(row.name, seed)] = (status, detail, '')
    if results and (row.name, seed) in completed and parking.discard(
        parking.parked_dir(results, preset, row.name, seed)):
      logging.info('%s seed %d: finished, so its parked copy is deleted.', row.name, seed)
    statuses.append({'row': row.name, 'seed': seed, 'status': status, 'detail': detail,
                     'workdir': row_workdir(root, preset, row.name, seed)})
    if on_finished and (row.name, seed) in ran:
      on_finished(statuses + [pending(table.rows[i], later) for later, i in
                              pairs[len(statuses):]])
  return statuses


def park_unfinished(table: tables.Table, preset: str, seeds: int, root: str,
                    results: str, only: Sequence[str] = (),
                    overrides: Sequence[str] = ()) -> list[str]:
  """Parks every unfinished run of a (row, seed) pair's config and start holding a
  checkpoint (`parking.park`); returns one line per pair that could not be parked."""
  failures = []
  for row in (r for r in table.rows if not only or r.name in only):
    for seed in range(row_seeds(table, row, seeds)):
      workdir = row_workdir(root, preset, row.name, seed)
      if (finished(workdir) or not parking.checkpoint_folders(workdir) or
          not runs_row(row, workdir, seed, overrides)):
        continue
      destination = parking.parked_dir(results, preset, row.name, seed)
      try:
        steps = parking.park(workdir, destination)
      except errors.UserError as e:
        logging.error('%s seed %d was not parked: %s', row.name, seed, e)
        failures.append(f'{row.name} seed {seed}: {e}')
        continue
      logging.info('%s seed %d: parked in %s (checkpoint steps %s).', row.name, seed,
                   destination, steps)
  return failures


def _exit_on_sigterm(signum: int, frame: Any) -> None:
  """SIGTERM unwinds like Ctrl-C, so `subprocess.run` kills the row it runs."""
  del frame
  sys.exit(f'Stopped by signal {signum}; rerun the command to continue.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  signal.signal(signal.SIGTERM, _exit_on_sigterm)
  table = load_table(_TABLE.value, _PRESET.value)
  unknown = set(_ONLY.value) - {r.name for r in table.rows}
  if unknown:
    raise app.UsageError(f'--only names rows not in {table.name}: {sorted(unknown)}.')
  for kv in _OVERRIDE.value:
    if '=' not in kv:
      raise app.UsageError(f'--override={kv!r} is not KEY=VALUE.')
  for row in table.rows:  # Every row's config and overrides, before any run.
    row_config(row, _OVERRIDE.value)
  root = os.path.abspath(_ROOT.value)
  if _PARK.value:
    failures = park_unfinished(table, _PRESET.value, _SEEDS.value, root, _RESULTS.value,
                               _ONLY.value, _OVERRIDE.value)
    if failures:
      sys.exit(f'{len(failures)} row(s) not parked: {failures}')
    return
  prior = table_results.previous_records(_RESULTS.value, table.name, _PRESET.value)

  def report(statuses: list[dict[str, Any]], final: bool) -> str:
    """Writes the results of the finished pairs; times them side by side if `final`."""
    recs = table_results.records(table, statuses, prior)
    rows = {row.name: row for row in table.rows}
    for r in recs:
      reasons = [provenance.stale_reason(r['revision'], r['summary'].get('code')),
                 table_results.changed_start(r, recs),
                 '' if same_config(rows[r['row']], r, _OVERRIDE.value) else
                 "its config is not the row's in the table now"]
      r['stale'] = '; '.join(reason for reason in reasons if reason)
    current = final and table_results.latencies_current(recs, prior,
                                                        _LATENCY_BATCH.value)
    # --report_only times nothing unless asked: it may run beside training.
    if final and (_REMEASURE.value or not (current or _REPORT_ONLY.value)):
      table_results.add_latencies(table, recs, _LATENCY_BATCH.value)
    else:  # Recorded rows keep their times; new ones get theirs at the end.
      for r in recs:
        before = prior.get((r['row'], r['seed'])) or {}
        if before.get('summary') == r['summary']:
          r.update({k: before[k] for k in table_results.LATENCY_KEYS if k in before})
      if final:
        logging.info('%s: keeping the recorded latencies (--remeasure_latency times '
                     'every row again).', 'Every finished row is the recorded run'
                     if current else '--report_only: rows not yet timed show none')
    return table_results.write_results(table, _PRESET.value, recs, statuses,
                                       _SEEDS.value, _RESULTS.value)

  if _REPORT_ONLY.value:
    statuses = [{'row': r.name, 'seed': s, 'detail': '',
                 'workdir': row_workdir(root, _PRESET.value, r.name, s)}
                for r in table.rows
                for s in range(row_seeds(table, r, _SEEDS.value))]
    for s in statuses:
      recorded = (s['row'], s['seed']) in prior
      s['status'] = ('finished' if finished(s['workdir'])
                     else 'recorded' if recorded else 'not run')
  else:
    statuses = run_table(table, _PRESET.value, _SEEDS.value, root, _OVERRIDE.value,
                         _ONLY.value, prior, _RERUN.value, results=_RESULTS.value,
                         on_finished=lambda statuses: report(statuses, final=False))
  path = report(statuses, final=True)
  recs = [s for s in statuses if s['status'] in ('finished', 'recorded')]
  failed = [s for s in statuses if s['status'] == 'failed']
  logging.info('Wrote %s: %d finished, %d failed.', path, len(recs), len(failed))
  if failed:
    sys.exit(f'{len(failed)} row(s) failed: {[s["row"] for s in failed]} (see their logs).')


if __name__ == '__main__':
  flags.mark_flag_as_required('table')
  app.run(main)
