"""The tables made of the files that the benchmark and mutation testing write: the speed tables of
docs/speed.md (their schema: tools.bench), bfloat16 against float32, and the mutation scores.
"""
import os
import statistics

from engine.config import PARTS, config
from engine.files import read_json
from reporting.answers import contrast, run_name, value_text
from reporting.reader import epoch_seconds_by_hardware, progress, training_time
from tools.bench import BESIDE, GOALS, speed_table


def read_beside(results_dir, name, suffix):
    """results_dir/<name without .json><suffix>.json, or None if there is none."""
    path = os.path.join(results_dir, name[:-5] + suffix + '.json')
    return read_json(path) if os.path.exists(path) else None


def speed_markdown(results_dir):
    """The benchmark table from results/bench_<device>.json and, beside it,
    results/bench_<device>_straightforward.json (written by tools/bench.py); with
    results/bench_<device>_flops.json also the FLOPs per image and the share of the device's
    measured convolution ceiling that each workload reaches, and that its goal would need."""
    tables = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        if not (name.startswith('bench_') and name.endswith('.json')) or name.endswith(
                tuple(s + '.json' for s in BESIDE)):
            continue
        ours, plain = read_beside(results_dir, name, ''), read_beside(results_dir, name, '_straightforward') or {}
        title = f'`{results_dir}/{name}` ({ours.get("device", name[6:-5])}):'
        tables.append(speed_table(ours, plain, read_beside(results_dir, name, '_flops'), title))
        bf16 = read_beside(results_dir, name, '_bf16')
        if bf16 is not None:
            tables.append(bf16_markdown(bf16['train_img_per_s'], ours['train_img_per_s'],
                                        plain.get('train_img_per_s', {}), f'{results_dir}/{name[:-5]}_bf16.json'))
    return '\n'.join(t for t in tables if t) if tables else 'No benchmark has been run yet.\n'


def bf16_markdown(bf16, fp32, plain, path):
    """Training throughput with bfloat16 forward passes (experiments.py run --precision bf16) beside
    float32, from the same machine; not counted against the goals, which ask for the same arithmetic."""
    lines = [f'Opt-in bfloat16 training (`{path}`): not the same arithmetic, so not counted against the goals '
             f'above.', '',
             '| training, images/s | bfloat16 | float32 | bfloat16 / float32 | bfloat16 / straightforward | goal |',
             '|---|---|---|---|---|---|']
    for key, a in bf16.items():
        b, c, g = fp32.get(key), plain.get(key), GOALS.get(key)
        lines.append(f'| {key} | {a:.2f} | {"" if b is None else f"{b:.2f}"} | '
                     f'{"" if b is None else f"{a / b:.1f}x"} | {"" if c is None else f"{a / c:.1f}x"} | '
                     f'{"" if g is None else f"{g:g}x"} |')
    return '\n'.join(lines) + '\n'


def bf16_parity(results_dir):
    """[(part, quantity, bf16 metrics, fp32 metrics, contrast)] for each likelihood bound or estimate
    (test NLL, test ELBO, importance-sampled NLL) of each part trained in both precisions in the cpu
    profile (results_dir/cpu-bf16 and results_dir/cpu): bfloat16 minus float32, paired over the same
    test images where both saved per-image values."""
    low_dir, full_dir = os.path.join(results_dir, 'cpu-bf16'), os.path.join(results_dir, 'cpu')
    found = []
    for part in PARTS:
        paths = [os.path.join(d, part, 'metrics.json') for d in (low_dir, full_dir)]
        if all(os.path.exists(p) for p in paths):
            low, full = (dict(read_json(p), dir=os.path.dirname(p)) for p in paths)
            for q in (q for q in low['values'] if q in full['values'] and (q in ('test_nll', 'test_elbo')
                                                                            or q.startswith('test_nll_is'))):
                found.append((part, q, low, full, contrast([(1, low, q), (-1, full, q)])))
    return found


def bf16_runs_markdown(results_dir):
    """Parts trained again with --precision bf16 into results_dir/cpu-bf16/<part> (same settings and
    seed), set against the float32 run of results_dir/cpu/<part>; both evaluated in float32."""
    lines, readings = [], []
    for part, q, low, full, d in bf16_parity(results_dir):
        readings.append(f'{part} {q}: ' + (f'bfloat16 is {abs(d["value"]):.2f} ± {d["se"]:.2f} nats '
                                       f'{"lower" if d["value"] < 0 else "higher"}, a measurable difference'
                                       if abs(d['value']) >= 2 * d['se'] else 'no measurable difference') + '.')
        shared = (set(low['config']) & set(full['config'])) - {'precision'}  # settings added later: at defaults
        same = all(low['config'][k] == full['config'][k] for k in shared)
        parity = 'yes' if d['value'] < 2 * d['se'] else 'no'  # lower is better: not measurably worse
        lines.append(f'| {part} | {q} | {value_text(low["values"][q])} | {value_text(full["values"][q])} | '
                     f'{d["value"]:+.2f} ± {d["se"]:.2f} ({"paired" if d["paired"] else "unpaired"}) | {parity} | '
                     f'{"/".join(map(str, d["n"]))} | {low["epochs"]} | {"yes" if same else "no"} |')
    if not lines:
        return ''
    root = os.path.join(results_dir, 'cpu-bf16')
    return ('Parts trained again in bfloat16 (`python experiments.py run PART --profile cpu --precision bf16`, '
            f'results in `{root}`) against their float32 run, both evaluated in float32; nats per image, lower is '
            'better. The difference is bfloat16 minus float32 over the same test images, with the standard error '
            'of the paired difference, which counts the spread over test images, not that between two training '
            'runs. '
            'Parity: bfloat16 is not measurably worse (its difference is below two standard errors). Each bfloat16 '
            'number is recomputed by `python experiments.py eval PART --quantity QUANTITY --profile cpu --precision '
            'bf16`; training speeds in bfloat16 and float32, measured side by side: '
            '[`docs/speed.md`](speed.md).\n\n'
            '| part | quantity | bfloat16 | float32 | difference | parity | images | epochs | '
            'same settings and seed |\n'
            '|---|---|---|---|---|---|---|---|---|\n'
            + '\n'.join(lines) + '\n\n' + ' '.join(readings) + '\n')


MNIST_TRAIN = 60000  # images in MNIST's training set, one epoch at course settings


def cpu_hours_markdown(runs, results_dir, bench='bench_cpu'):
    """What the course settings take on a CPU: the course-settings runs (profile `full`) trained on
    one, with their training time, median epoch and evaluation time; for the Gaussian VAE (5b, 5c),
    which has none, what the benchmark's rates of its training step at course sizes imply."""
    rows, hardware = [], set()
    for r in (r for r in runs if r['profile'] == 'full'):
        for part, m in r['parts'].items():
            spent = training_time(m)
            if any(not label.startswith('CPU') for label, _ in spent):
                continue
            hardware.update(label for label, _ in spent)
            hours = sum(s for _, s in spent) / 3600
            rows.append((list(PARTS).index(part), f'| {part} | {run_name(r, [part])} | {m["epochs"]} | {hours:.1f} h | '
                        + median_epoch(epoch_seconds_by_hardware(m), len(spent) == 1) + ' | '
                        f'{m.get("eval_seconds", 0) / 60:.0f} min |'))
    lines = []
    if rows:
        lines += [f'The full-profile runs (the course settings; 6e: our design) in `{results_dir}/` that trained on a '
                  f'CPU ({"; ".join(sorted(hardware))}), '
                  'in wall time summed over their sittings (`metrics.json`); some sittings shared the CPU with other '
                  'work, which the median epoch (from `run.log`) is less affected by:', '',
                  '| part | run | epochs | training | median epoch | evaluation |', '|---|---|---|---|---|---|',
                  *(row for _, row in sorted(rows)), '']
    rates = {precision: read_beside(results_dir, bench + '.json', suffix) for precision, suffix in
             (('bf16', '_bf16'), ('float32', ''))}
    missing = [p for p in ('5b', '5c') if not any(r['profile'] == 'full' and p in r['parts'] for r in runs)]
    rates = {k: v['train_img_per_s']['gaussian_vae'] for k, v in rates.items()
             if v and 'gaussian_vae' in v.get('train_img_per_s', {})}
    if missing and rates:
        cfg = config('5b', 'full')
        per_epoch = {k: (cfg['train_images'] or MNIST_TRAIN) / v for k, v in rates.items()}
        hours = ' and '.join(f'{cfg["epochs"] * s / 3600:.1f} h' for s in per_epoch.values())
        lines.append(f'{" and ".join(missing)} (the Gaussian VAE) have no course-settings run yet. '
                     'Its training step at course sizes (batch 100, one Adam step) runs at '
                     + ' and '.join(f'{v:.1f} images/s in {k}' for k, v in rates.items())
                     + f', timed by `tools/bench.py` on a 2-core CPU (`{results_dir}/{bench}_bf16.json`, '
                     f'`{results_dir}/{bench}.json`): '
                     + ' and '.join(f'{s / 60:.0f} min an epoch in {k}' for k, s in per_epoch.items())
                     + f', so {hours} '
                     f'of training for the {cfg["epochs"]} epochs of each part, before evaluation. These are rates '
                     'of timed training steps, not of a run.')
    return '\n'.join(lines) + '\n' if lines else 'No course-settings run has trained on a CPU yet.\n'


def median_epoch(by_hardware, one=False):
    """The median epoch, in minutes: one number where the epochs ran on one kind of hardware (or
    `one`, a run whose sittings all name the same, its log's older headers none), else one for
    each, named with its count of epochs (never one median across machines)."""
    if not by_hardware:
        return ''
    if one or len(by_hardware) == 1:
        return f'{statistics.median([s for _, seconds in by_hardware for s in seconds]) / 60:.1f} min'
    return '; '.join(f'{statistics.median(seconds) / 60:.1f} min on {label or "unrecorded hardware"} '
                     f'({len(seconds)} epoch{"" if len(seconds) == 1 else "s"})' for label, seconds in by_hardware)


def unfinished_markdown(runs, results_dir):
    """The course-settings parts that have not finished: how far each one in progress has trained (its
    run.log, committed at the end of a sitting, in results_dir/full[-<precision>]/<part>/), and which
    have not started."""
    done = {p for r in runs if r['profile'] == 'full' for p in r['parts']}
    dirs = (sorted(d for d in os.listdir(results_dir) if d.partition('-')[0] == 'full')
            if os.path.isdir(results_dir) else [])
    going, waiting = [], []
    for part in (p for p in PARTS if p not in done):
        found = [(d, progress(os.path.join(results_dir, d, part))) for d in dirs
                 if os.path.exists(os.path.join(results_dir, d, part, 'run.log'))]
        if not found:
            waiting.append(part)
        for d, at in found:
            going.append(f'{part} (`{results_dir}/{d}/{part}`): '
                         + (f'epoch {at["epoch"]} of {at["epochs"]} done by {at["when"]}' if at
                            else 'started, no epoch done'))
    if not going and not waiting:
        return 'Every part has finished at the course settings.\n'
    lines = []
    if going:
        lines.append('In progress at the course settings, from the `run.log` of each: ' + '; '.join(going) + '. '
                     'Such a run resumes from its checkpoint: on the machine that trained it, or from the one carried '
                     'in its `checkpoint.pack` when that is committed (`experiments.py carry`).')
    if waiting:
        lines.append(f'Not started at the course settings: {", ".join(waiting)}.')
    return ' '.join(lines) + '\n'


def mutation_markdown(results_dir):
    """The mutation-testing table from results/mutation/summary.json (tools/mutation.py), or a line
    saying that it has not been run."""
    path = os.path.join(results_dir, 'mutation', 'summary.json')
    if not os.path.exists(path):
        return 'Mutation testing has not been run here yet (`python -m tools.mutation`).\n'
    s = read_json(path)
    lines = ['| module | mutants | killed or timed out | equivalent | survived or no test | score | wall time |',
             '|---|---|---|---|---|---|---|']
    for module, m in s['modules'].items():
        c = m['counts']
        caught = c.get('killed', 0) + c.get('timeout', 0)
        runs = m.get('runs') or []
        minutes = (f"{m['seconds'] / 60:.0f} min" + (f' in {len(runs)} runs' if len(runs) > 1 else '')
                   if m.get('seconds') else '')
        lines.append(f"| `{m.get('path', module + '.py')}` | {m['mutants']} | {caught} | {m['equivalent']} | "
                     f"{len(m['survivors'])} | {m['score']}% | {minutes}{'' if m['complete'] else ' (not complete)'} |")
    return ('\n'.join(lines) + f"\n\nmutmut {s['mutmut']}, torch {s['torch']}, {s['cores']} cores, one test worker "
            f"per core; each survivor and equivalent mutant is listed in `results/mutation/summary.md`.\n")
