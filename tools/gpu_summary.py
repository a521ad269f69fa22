"""The summary of tools/gpu_check.sh: what each step measured, read from the files it wrote.

    python tools/gpu_summary.py WORK PROFILE      # WORK: the check's working directory
"""
import datetime
import glob
import json
import os
import re
import sys

BAD = r'Traceback|Error|error:|failed|skipping cudagraphs|Recompiling'


def read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ''


def metrics(d):
    text = read(os.path.join(d, 'metrics.json'))
    return json.loads(text) if text else None


def value(m, q):
    x = (m or {}).get('values', {}).get(q)
    if not x:
        return '-'
    return f"{x['value']:.2f}±{x['stderr']:.2f} (n={x['n_images']})" if x.get('stderr') is not None else str(x['value'])


def cumulative(d):
    """Cumulative training seconds at the end of each epoch, from run.log (whole seconds)."""
    return [int(s) for s in re.findall(r'epoch \d+/\d+, step \d+: .*?, (\d+) s of training',
                                       read(os.path.join(d, 'run.log')))]


def preflight_section(work):
    """The preflight's findings: the Python, the packages, what is missing and which steps it stops."""
    lines = read(os.path.join(work, 'preflight.txt')).splitlines()
    if lines:
        print('== preflight:')
        for line in lines:
            if line.startswith(('python ', 'missing ', 'step ', 'gpu data', 'preflight ')):
                print('   ' + line[:400])


def steps_section(work):
    steps = [line.split() for line in read(os.path.join(work, 'steps.txt')).splitlines() if line.strip()]
    print('== steps (exit status, seconds of its limit):', ', '.join(
        f'{s[0]} {s[3]} {int(s[2]) - int(s[1])}s/{s[4].split("=")[1] if len(s) > 4 else "?"}' if s[1] != '-'
        else f'{s[0]} {s[3]}' for s in steps))
    skipped = [s for s in steps if s[1] == '-']
    if skipped:
        print('   SKIPPED: ' + ', '.join(f'{s[0]} ({s[3]})' for s in skipped))
    for s in steps:
        bad = [line for line in read(os.path.join(work, s[0] + '.log')).splitlines() if re.search(BAD, line)]
        if bad:
            print(f'   {s[0]}: ' + ' / '.join(bad[-4:])[:600])
    return steps


def smoke_section(results):
    print('== 1. smoke, every part (train s, eval s, device); --jobs 3 against serial:')
    differ = []
    for d in sorted(glob.glob(os.path.join(results, 'serial', 'smoke*', '*'))):
        m = metrics(d)
        if m:
            print(f"   {os.path.basename(os.path.dirname(d)):10s} {m['part']:12s} {m['train_seconds']:6.1f} "
                  f"{m['eval_seconds']:6.1f} {m['device']}  " + ', '.join(f'{q} {x["value"]:.1f}'
                                                                       for q, x in m['values'].items()))
            other = metrics(d.replace(os.path.join(results, 'serial'), os.path.join(results, 'jobs')))
            if os.path.basename(os.path.dirname(d)) == 'smoke' and (other or {}).get('values') != m['values']:
                differ.append(m['part'])
    if not glob.glob(os.path.join(results, 'serial', 'smoke', '*', 'metrics.json')):
        print('   no smoke run finished')
    elif differ:
        print('   --jobs 3: DIFFERENT or missing: ' + ', '.join(differ))
    else:
        print('   --jobs 3: the same numbers as serial')


def resume_section(work, results, profile):
    d = os.path.join(results, 'resume', profile, '6b')
    m = metrics(d)
    print(f'== 2. a CPU checkpoint of 6b resumed on the device ({profile} profile):')
    if not m:
        print('   not finished')
        return
    before = read(os.path.join(work, 'cpu_checkpoint.txt')).split()
    seconds = m['train_seconds'] - float(before[1]) if len(before) > 1 else float('nan')
    steps = m['steps'] / max(1, m['epochs'])
    print(f"   from epoch {before[0] if before else '?'}: {seconds:.1f} s of training on the device "
          f"(~{1000 * seconds / steps:.2f} ms/step if a whole epoch); eval {m['eval_seconds']:.1f} s; "
          f"message of the other device: {'another device' in read(os.path.join(d, 'run.log'))}; "
          f"test -ELBO {value(m, 'test_elbo')}; IS {value(m, 'test_nll_is' + str(m['config']['is_samples']))}; "
          f"precision {m.get('precision', '?')}; hardware {m['hardware']}")


def eval_section(work):
    lines = read(os.path.join(work, 'eval_6c.log')).strip().splitlines()
    if lines:
        print('== 3. 6c (CPU-trained) importance-sampled NLL recomputed on the device:', lines[-1][:160])


def estimate_section(work):
    print('== 4. estimate (this machine, fresh runs):')
    for line in read(os.path.join(work, 'estimate.log')).splitlines():
        if re.match(r'\s+(\S+)\s+(fp32|bf16|fp16)\s+~|\s+total', line):
            print('  ' + line.rstrip())


def graphs_section(work, results, profile):
    print('== 5. 6b: eager against CUDA graphs (--compile-train), ms/step after the first epoch:')
    for mode in ('eager', 'graphs'):
        d = os.path.join(results, mode, profile, '6b')
        m, c = metrics(d), cumulative(d)
        if m and c and m['epochs'] > 1:
            per_epoch = m['steps'] / m['epochs']
            steady = (m['train_seconds'] - c[0]) / (per_epoch * (m['epochs'] - 1)) * 1000
            fellback = 'training eagerly' in read(os.path.join(work, f'train_{mode}.log'))
            print(f"   {mode:6s} epoch 1 {c[0]} s (compiling included), then {steady:.2f} ms/step, test -ELBO "
                  f"{value(m, 'test_elbo')}" + ('  [COMPILE FAILED: eager fallback]' if fellback else ''))
        else:
            print(f'   {mode}: not finished ({", ".join(map(str, c))} s at epoch ends)')


def bench_section(work):
    print('== 6. bench (images/s; sampling s):')
    for suffix in ('', '_straightforward', '_bf16'):
        b = read(os.path.join(work, f'bench{suffix}.json'))
        if b:
            b = json.loads(b)
            print(f"   {suffix[1:] or 'this implementation':20s} " + '; '.join(
                f'{g} ' + ', '.join(f'{k} {x:.4g}' for k, x in vals.items())
                for g, vals in b.items() if isinstance(vals, dict)))
            if b.get('settings'):
                print(f"   {'':20s} settings: {b['settings']}")
    f = read(os.path.join(work, 'bench_flops.json'))
    if f:
        f = json.loads(f)
        print('   GFLOP/image ' + ', '.join(f'{k} {x:.3g}' for k, x in f['gflop_per_image'].items())
              + f"; ceiling conv {f['ceiling_gflop_per_s']:.0f} GFLOP/s")


def busy_section(work, steps):
    rows = [r.split() for r in read(os.path.join(work, 'dmon.log')).splitlines() if r and not r.startswith('#')]
    util = [(r[0], int(r[2])) for r in rows if len(r) > 2 and r[2].isdigit() and r[0].count(':') == 2]
    if not util:
        return

    def local(ts):
        t = datetime.datetime.fromtimestamp(int(ts))
        return t.hour * 3600 + t.minute * 60 + t.second

    def clock(hms):  # dmon's 'HH:MM:SS', in seconds since midnight
        h, m, s = map(int, hms.split(':'))
        return h * 3600 + m * 60 + s
    secs = [(clock(t), u) for t, u in util]
    parts = []
    for s in steps:
        if s[1] != '-':
            u = [x for t, x in secs if local(s[1]) <= t <= local(s[2])]
            parts.append(f'{s[0]} {sum(u) / len(u):.0f}%' if u else f'{s[0]} -')
    print('== SM busy (nvidia-smi, mean over the step):', ', '.join(parts))


def main(work, profile):
    results = os.path.join(work, 'results')
    print('== device:', ' | '.join(read(os.path.join(work, 'gpu.txt')).split('\n')).strip(' |'))
    preflight_section(work)
    steps = steps_section(work)
    smoke_section(results)
    resume_section(work, results, profile)
    eval_section(work)
    estimate_section(work)
    graphs_section(work, results, profile)
    bench_section(work)
    busy_section(work, steps)


if __name__ == '__main__':
    main(*sys.argv[1:3])
