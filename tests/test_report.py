"""report.py writes what the runs' files say: values, standard errors and sample sizes come from
metrics.json, comparisons are paired over per_image.pt when both parts saved it, and the settings
come from engine/config.py."""
import importlib
import json
import os
import re

import pytest
import torch

from reporting import answers
from engine import figures
from reporting import reader
from reporting import tables
from reporting import writeup
from engine.config import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def v(value, stderr, n=1000, **extra):
    return dict(value=value, stderr=stderr, n_images=n, **extra)


def write_part(run, part, values, per_image=None, title='t', history=None, **settings):
    """A finished part in the run directory `run` (results/<profile>[-<precision>]), as run_part leaves it;
    settings override the profile's."""
    profile, _, precision = os.path.basename(run).partition('-')
    out = os.path.join(run, part)
    os.makedirs(out, exist_ok=True)
    cfg = config(part, profile if profile in ('full', 'cpu') else 'full', precision=precision or 'fp32', **settings)
    m = dict(part=part, title=title, profile=profile, device='cpu', hardware='CPU (test)', epochs=cfg['epochs'],
             train_seconds=600.0,
             values=values, figures={}, config=cfg, model=os.path.join(out, 'model.pt'))
    with open(os.path.join(out, 'metrics.json'), 'w') as fh:
        json.dump(m, fh)
    if per_image is not None:
        torch.save({q: t.double() for q, t in per_image.items()}, os.path.join(out, 'per_image.pt'))
    if history is not None:
        with open(os.path.join(out, 'history.json'), 'w') as fh:
            json.dump(history, fh)


def summary(t):
    """{value, stderr, n_images} of per-image values, as evaluate.mean_stderr computes them."""
    return v(t.mean().item(), (t.std() / len(t) ** 0.5).item(), len(t))


def correlated_pair(shift, noise, n=1000, seed=0):
    """Per-image values of two parts on the same images: a large per-image spread they share (image
    difficulty), a and b = a + shift + small noise."""
    g = torch.Generator().manual_seed(seed)
    a = 90 + 20 * torch.randn(n, generator=g, dtype=torch.float64)
    return a, a + shift + noise * torch.randn(n, generator=g, dtype=torch.float64)


def contrast_6d_6b(tmp_path, a, b):
    """6d - 6b from per-image NLLs a (6b) and b (6d) saved in a run directory; the contrast and the metrics."""
    run = str(tmp_path / 'cpu')
    write_part(run, '6b', {'test_nll_is1000': summary(a)}, {'test_nll_is1000': a})
    write_part(run, '6d', {'test_nll_is1000': summary(b)}, {'test_nll_is1000': b})
    ms = {m['part']: m for m in reader.load_metrics(run)}
    return answers.contrast([(1, ms['6d'], 'test_nll_is1000'), (-1, ms['6b'], 'test_nll_is1000')]), ms


def test_paired_standard_error_is_that_of_the_per_image_difference(tmp_path):
    a, b = correlated_pair(shift=0.3, noise=0.5)
    c, ms = contrast_6d_6b(tmp_path, a, b)
    d = b - a
    assert c['paired'] and c['n'] == [1000]
    assert c['value'] == pytest.approx(d.mean().item()) and c['se'] == pytest.approx((d.std() / 1000 ** 0.5).item())
    se_a, se_b = (ms[p]['values']['test_nll_is1000']['stderr'] for p in ('6b', '6d'))
    unpaired = (se_a ** 2 + se_b ** 2) ** 0.5
    assert c['se'] < unpaired / 20                   # the shared per-image spread cancels
    assert answers.measurable(c) and 'paired, 1000 test images' in answers.compared(c)
    assert 'no measurable' not in answers.compared(c)  # 0.3 nats, while the unpaired error would be about 0.9


def test_paired_over_the_images_both_cover(tmp_path):
    a, b = correlated_pair(shift=1.0, noise=0.5)
    run = str(tmp_path / 'cpu')
    write_part(run, '6e-freebits', {'test_nll_is1000': summary(b[:500])}, {'test_nll_is1000': b[:500]})
    write_part(run, '6a', {'test_nll': summary(a)}, {'test_nll': a})
    ms = {m['part']: m for m in reader.load_metrics(run)}
    c = answers.contrast([(1, ms['6e-freebits'], 'test_nll_is1000'), (-1, ms['6a'], 'test_nll')])
    assert c['paired'] and c['n'] == [500] and c['value'] == pytest.approx((b[:500] - a[:500]).mean().item())


def test_no_measurable_difference_under_two_standard_errors(tmp_path):
    a, b = correlated_pair(shift=0.0, noise=0.5)
    c, ms = contrast_6d_6b(tmp_path, a, b)
    assert c['paired'] and abs(c['value']) < 2 * c['se']
    assert answers.compared(c).startswith('no measurable difference')
    assert answers.compared(dict(value=0.59, se=0.3, n=[10], paired=True)).startswith('no measurable')
    assert not answers.compared(dict(value=-0.61, se=0.3, n=[10], paired=True)).startswith('no measurable')


def test_without_per_image_values_the_comparison_is_unpaired_and_says_so(tmp_path):
    a, b = correlated_pair(shift=0.3, noise=0.5)
    run = str(tmp_path / 'cpu')
    write_part(run, '6b', {'test_nll_is1000': summary(a)}, {'test_nll_is1000': a})
    write_part(run, '6d', {'test_nll_is1000': summary(b)})          # an older run: no per_image.pt
    ms = {m['part']: m for m in reader.load_metrics(run)}
    c = answers.contrast([(1, ms['6d'], 'test_nll_is1000'), (-1, ms['6b'], 'test_nll_is1000')])
    va, vb = ms['6b']['values']['test_nll_is1000'], ms['6d']['values']['test_nll_is1000']
    assert not c['paired'] and c['value'] == pytest.approx(vb['value'] - va['value'])
    assert c['se'] == pytest.approx((va['stderr'] ** 2 + vb['stderr'] ** 2) ** 0.5)
    text = answers.compared(c)
    assert 'unpaired' in text and text.startswith('no measurable difference')  # 0.3 < 2 x 0.9


def test_iaf_bound_tightness_is_measurable_only_when_paired(tmp_path):
    """6b and 6d whose bounds differ in tightness by 0.6 nats per image: the paired contrast resolves
    it, the unpaired one (no per_image.pt) does not."""
    g = torch.Generator().manual_seed(1)
    nll_b = 88 + 20 * torch.randn(1000, generator=g, dtype=torch.float64)
    nll_d = nll_b + 0.3 * torch.randn(1000, generator=g, dtype=torch.float64)
    elbo_b = nll_b + 7.4 + 0.5 * torch.randn(1000, generator=g, dtype=torch.float64)
    elbo_d = nll_d + 6.8 + 0.5 * torch.randn(1000, generator=g, dtype=torch.float64)
    found = {}
    for name, with_per_image in (('paired', True), ('unpaired', False)):
        run = str(tmp_path / name / 'cpu')
        for part, elbo, nll in (('6b', elbo_b, nll_b), ('6d', elbo_d, nll_d)):
            values = {'test_elbo': summary(elbo), 'test_nll_is1000': dict(summary(nll), M=1000)}
            write_part(run, part, values, {'test_elbo': elbo, 'test_nll_is1000': nll} if with_per_image else None)
        ms = {m['part']: m for m in reader.load_metrics(run)}
        found[name] = answers.contrast([(1, ms['6b'], 'test_elbo'), (-1, ms['6b'], 'test_nll_is1000'),
                                        (-1, ms['6d'], 'test_elbo'), (1, ms['6d'], 'test_nll_is1000')])
    assert answers.measurable(found['paired']) and found['paired']['value'] == pytest.approx(0.6, abs=0.1)
    assert not answers.measurable(found['unpaired']) and not found['unpaired']['paired']


def test_readme_and_docs_carry_the_measured_numbers_course_settings_first(tmp_path):
    root = tmp_path / 'results'
    for run, nll in (('cpu', 90.1234), ('full-bf16', 80.5)):
        write_part(str(root / run), '6b', {'test_elbo': v(95.4321, 0.25, 10000), 'kl': v(20.5, 0.1, 10000),
                                           'test_nll_is1000': v(nll, 0.31, 1000, M=1000)})
    (root / 'full-bf16' / '6a').mkdir(parents=True)      # a run in progress: a log and a checkpoint, no metrics
    (root / 'full-bf16' / '6a' / 'run.log').write_text('6a: PixelCNN ...\n')
    (root / 'full-bf16' / '6a' / 'checkpoint.pt').write_bytes(b'')
    readme, docs = tmp_path / 'README.md', tmp_path / 'docs'
    readme.write_text(''.join(f'{b}\nold\n{e}\n' for b, e in ((writeup.MAP_BEGIN, writeup.MAP_END),
                                                             (writeup.TABLES_BEGIN, writeup.TABLES_END),
                                                             (writeup.GPU_BEGIN, writeup.GPU_END),
                                                             (writeup.CPU_BEGIN, writeup.CPU_END),
                                                             (writeup.PROFILES_BEGIN, writeup.PROFILES_END))))
    docs.mkdir()
    for name, (b, e) in (('results.md', (writeup.BEGIN, writeup.END)), ('running.md', (writeup.PRECISION_BEGIN,
                         writeup.PRECISION_END)), ('mutation.md', (writeup.MUTATION_BEGIN, writeup.MUTATION_END)),
                         ('speed.md', (writeup.SPEED_BEGIN, writeup.SPEED_END))):
        (docs / name).write_text(f'# {name}\n{b}\nold\n{e}\n')
    runs = reader.load_runs(str(root))
    assert [r['name'] for r in runs] == ['full-bf16', 'cpu']
    writeup.update_readme(str(readme), runs, str(root))
    writeup.update_docs(str(docs), str(root), chapter='the chapter\n')
    text = readme.read_text()
    assert 'old' not in text and '90.12 ± 0.31 (first 1,000)' in text and '95.43 ± 0.25 (all 10,000)' in text
    header = next(line for line in text.splitlines() if line.startswith('| part | quantity |'))
    assert header.index('course settings, bf16 training') < header.index('cpu profile, float32')
    assert 'one seed' in text and '### ' not in text  # the answers are in docs/results.md, not in the README
    row = next(line for line in text.splitlines() if line.startswith('| 6b |'))
    assert '80.50 ± 0.31 (first 1,000)' in row and 'course settings, bf16 training' in row
    assert '`binaryvae.ipynb` cell' in row
    assert '6a: not run yet' in text and 'Nothing has been measured on a GPU yet' in text
    assert (docs / 'results.md').read_text() == f'# results.md\n{writeup.BEGIN}\nthe chapter\n{writeup.END}\n'
    assert 'Mutation testing has not been run here yet' in (docs / 'mutation.md').read_text()
    assert 'No part has been trained in both precisions yet.' in (docs / 'running.md').read_text()
    assert 'No benchmark has been run yet.' in (docs / 'speed.md').read_text()


def test_the_gaussian_figures_are_drawn_again_at_the_size_of_the_others(tmp_path):
    """5b's raw grids (28-pixel tiles, padding 2) become figures of the engine's size, with a title."""
    from PIL import Image
    import torchvision.utils as vutils
    run = str(tmp_path / 'cpu')
    write_part(run, '5b', {'test_elbo': v(1500.0, 7.0, 10000)})
    tiles = torch.rand(59, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for name, images, nrow in (('samples', tiles[:49], 7), ('reconstructions', tiles[49:59].repeat(2, 1, 1, 1), 10)):
        vutils.save_image(vutils.make_grid(images, nrow=nrow, padding=2, pad_value=0.5),
                          os.path.join(run, '5b', f'{name}.png'))
    drawn = writeup.gaussian_figures(reader.load_runs(str(tmp_path)), str(tmp_path / 'figures'))
    assert [os.path.basename(p) for p in drawn] == ['5b-samples.png', '5b-reconstructions.png']
    assert Image.open(drawn[0]).size == (946, 847)                  # as results/full/6b/samples.png
    assert Image.open(drawn[1]).size == (1276, 297)                 # as results/full/6b/reconstructions.png


def test_remedies_table_for_the_notebooks_names_the_images_of_each_number(tmp_path):
    run = str(tmp_path / 'cpu')
    for part, nll, kl, au in (('6e-baseline', 90.0, 0.05, 0), ('6e-freebits', 91.0, 6.0, 12)):
        write_part(run, part, {'test_elbo': v(nll + 5, 0.3, 10000), 'test_nll_is1000': v(nll, 0.5, 500, M=1000),
                               'kl': v(kl, 0.01, 10000), 'active_units': v(au, None, 10000)})
    table = writeup.remedies_markdown(reader.load_metrics(run))
    assert table.count('| 6e-') == 8 and '12 of 49' in table and '91.00 ± 0.50 (first 500)' in table
    assert writeup.remedies_markdown([]) == ''


def test_remedies_kl_figure_draws_every_configuration_apart(tmp_path):
    run = str(tmp_path / 'cpu')
    for part in answers.REMEDIES:
        write_part(run, part, {'kl': v(10.0, 0.1)}, history=dict(step=list(range(200)), kl=[10.0] * 200,
                                                                  autoregress_step=100))
    assert os.path.exists(figures.remedies_kl_figure(run))
    styles = [(s['ls'], s['marker']) for s in figures.STYLES.values()]
    assert len(set(styles)) == len(styles) == len(answers.REMEDIES)


def test_homework_map_names_resolve_and_cover_the_handout():
    items = [h[0] for h in writeup.HOMEWORK]
    assert items == ['5a', '5b', '5c', '6a', '6b', '6c', '6d', '6e'] + [f'Problem {i}' for i in range(1, 5)]
    for item, _, parts, _, _, notebook, code in writeup.HOMEWORK:
        for name in re.findall(r'`([^`]+)`', code):
            if '/' in name:
                assert os.path.exists(os.path.join(ROOT, name)), name
                continue
            parts = name.split('.')
            n = 1 if parts[0] in ('models', 'losses') else 2   # the course files, or a module of a folder
            obj = importlib.import_module('.'.join(parts[:n]))
            for attr in parts[n:]:
                obj = getattr(obj, attr)
        if notebook:
            assert ' cell ' in writeup.notebook_cell(*notebook[:2]), item


def test_homework_map_names_the_run_of_each_part_where_an_item_mixes_runs(tmp_path):
    root = tmp_path / 'results'
    write_part(str(root / 'full'), '6e-baseline', {'kl': v(10.4, 0.03, 10000)})
    for part in answers.REMEDIES[1:]:
        write_part(str(root / 'cpu'), part, {'kl': v(14.4, 0.04, 10000)})
    row = next(line for line in writeup.homework_map(reader.load_runs(str(root)), str(tmp_path)).splitlines()
               if line.startswith('| 6e |'))
    assert '6e-baseline KL term: 10.40 ± 0.03 (all 10,000) (full profile, our design, float32); 6e-warmup KL term: ' \
           '14.40 ± 0.04 (all 10,000) (cpu profile, float32)' in row     # 6e: the handout sets nothing
    write_part(str(root / 'full'), '6b', {'test_nll_is1000': v(85.1, 0.7, 1000, M=1000)})
    row = next(line for line in writeup.homework_map(reader.load_runs(str(root)), str(tmp_path)).splitlines()
               if line.startswith('| 6b |'))
    assert '| NLL, importance sampling (M = 1000): 85.10 ± 0.70 (first 1,000); course settings, float32 |' in row


def test_verification_counts_only_checks_of_the_values_reported_now(tmp_path):
    root = tmp_path / 'results'
    res = root / 'cpu'
    write_part(str(res), '6b', {'test_elbo': v(95.0, 0.2, 10000), 'test_nll_is1000': v(90.0, 0.3, 1000, M=1000),
                                'kl': v(20.0, 0.1, 10000)})
    checks = [dict(part='6b', quantity='test_elbo', reported=95.0, ok=True, seconds=30.0),
              dict(part='6b', quantity='test_nll_is1000', reported=90.0, ok=False, seconds=400.0),
              dict(part='6b', quantity='kl', reported=19.0, ok=True, seconds=20.0)]  # checked against an older run
    checks.append(dict(checks[0], profile='full', reported=95.0, ok=False))  # another run directory's check
    (root / 'verify.json').write_text(json.dumps(checks))
    text = writeup.verification(reader.load_runs(str(root)))
    assert text.startswith('1 of the 3 numbers')
    assert 'did not agree: cpu 6b test_nll_is1000' in text
    assert 'not yet checked against their current value: 1 of cpu' in text
    write_part(str(root / 'full-bf16'), '6a', {'test_nll': v(82.0, 0.2, 10000)})
    (root / 'verify.json').write_text(json.dumps(checks[:1] + [dict(part='6a', quantity='test_nll', reported=82.0,
                                                                      ok=True, seconds=60.0, profile='full',
                                                                      precision='bf16')]))
    text = writeup.verification(reader.load_runs(str(root)))  # one sentence for every run
    assert text.startswith('2 of the 4 numbers') and text.count('recomputed') == 1
    assert 'not yet checked against their current value: 2 of cpu' in text
    assert writeup.verification(reader.load_runs(str(tmp_path / 'none'))) is None


def test_every_number_verified_is_said_once_for_all_runs(tmp_path):
    root = tmp_path / 'results'
    write_part(str(root / 'cpu'), '6b', {'test_elbo': v(95.0, 0.2, 10000)})
    write_part(str(root / 'full'), '6b', {'test_elbo': v(94.0, 0.2, 10000)})
    (root / 'verify.json').write_text(json.dumps([
        dict(part='6b', quantity='test_elbo', reported=95.0, ok=True, seconds=30.0, profile='cpu'),
        dict(part='6b', quantity='test_elbo', reported=94.0, ok=True, seconds=90.0, profile='full')]))
    text = writeup.verification(reader.load_runs(str(root)))
    assert text.startswith('All 2 numbers of these tables were recomputed') and 'longest took 2 min' in text
    assert 'not yet checked' not in text and 'did not agree' not in text


# The speed tables (tools/bench.py's JSON files) --------------------------------------------------------


def test_mutation_table_reads_the_scores_and_times_of_the_last_run(tmp_path):
    summary = dict(modules=dict(losses=dict(mutants=10, counts=dict(killed=8, timeout=1, survived=1), equivalent=0,
                                            score=90.0, complete=True, seconds=300.0,
                                            survivors={'losses.x_f__mutmut_1': 'survived'}),
                                train=dict(mutants=4, counts={'killed': 3, 'not checked': 1}, equivalent=1,
                                           score=100.0, complete=False, seconds=None, survivors={})),
                   equivalent={}, mutmut='3.8.1', torch='2.14.1', cores=2, machine='x86_64')
    (tmp_path / 'mutation').mkdir()
    (tmp_path / 'mutation' / 'summary.json').write_text(json.dumps(summary))
    text = tables.mutation_markdown(str(tmp_path))
    assert '| `losses.py` | 10 | 9 | 0 | 1 | 90.0% | 5 min |' in text
    assert '| `train.py` | 4 | 3 | 1 | 0 | 100.0% |  (not complete) |' in text
    assert 'mutmut 3.8.1, torch 2.14.1, 2 cores' in text


def test_every_part_auto_trains_in_bf16_has_shown_parity_in_the_committed_runs():
    """config.BF16_PARITY lists only parts whose committed bf16 run (results/cpu-bf16) is not
    measurably worse than their float32 run (results/cpu), paired over the same test images."""
    from engine import config as C
    found = tables.bf16_parity(os.path.join(ROOT, 'results'))
    for part in C.BF16_PARITY:
        rows = [(q, low, full, d) for p, q, low, full, d in found if p == part]
        assert rows, f'{part} is in BF16_PARITY without a committed run in both precisions'
        for q, low, full, d in rows:  # every likelihood bound or estimate the two runs share
            assert (low['precision'], full['precision']) == ('bf16', 'fp32') and low['epochs'] == full['epochs']
            assert d['paired'] and d['value'] < 2 * d['se'], (part, q, d)


def test_time_spent_on_each_device_is_quoted_apart_never_credited_to_one(tmp_path):
    """A run trained 85 min on a CPU, then 10 min on an H100: the summary, its rows and the GPU-time
    table say where each part of the time went. A run finished before sittings were recorded
    trained on its recorded hardware."""
    from reporting import writeup
    from reporting.summary import metrics_table, summary_rows
    from reporting.reader import training_minutes
    run = str(tmp_path / 'full')
    write_part(run, '6a', {'test_nll': v(90.0, 0.2)})
    path = os.path.join(run, '6a', 'metrics.json')
    with open(path) as fh:
        legacy = json.load(fh)
    moved = dict(legacy, device='cuda', hardware='NVIDIA H100', train_seconds=5700.0, sittings=[
        dict(device='cpu', hardware='CPU (test)', seconds=3000.0),
        dict(device='cpu', hardware='CPU (test)', seconds=2100.0),
        dict(device='cuda', hardware='NVIDIA H100', seconds=600.0)])
    assert training_minutes(moved) == '85.0 min CPU (test) + 10.0 min NVIDIA H100'
    assert training_minutes(legacy) == '10.0 min' and 'CPU (test) |' in metrics_table([legacy])
    assert '| 85.0 min CPU (test) + 10.0 min NVIDIA H100 | full, fp32, CPU (test) + NVIDIA H100 |' in \
        metrics_table([moved])
    assert summary_rows([moved], str(tmp_path))[0]['train_seconds_by_hardware'] == {'CPU (test)': 5100.0,
                                                                                   'NVIDIA H100': 600.0}
    row = writeup.gpu_time([dict(name='full', profile='full', precision='fp32', parts={'6a': moved})])
    assert '| CPU (test) + NVIDIA H100 | 85 min CPU (test) + 10 min NVIDIA H100 |' in row
    assert writeup.gpu_time([dict(name='full', profile='full', precision='fp32', parts={'6a': legacy})]).startswith(
        'Nothing has been measured on a GPU yet')


def epoch_line(epoch, epochs, total):
    """engine.train's line at an epoch's end, with the cumulative training time."""
    return (f'2026-12-01 00:00:00  6b: epoch {epoch}/{epochs}, step {600 * epoch}: train 90.00 (mean of the epoch), '
            f'test 89.00 (10000 images), KL 20.00, beta 1.00, lr 0.001, {total} s of training\n')


def logged_part(tmp_path, log=None):
    """A finished 6b in tmp_path/full whose run.log is `log` (none if None), as the reader sees it."""
    run = str(tmp_path / 'full')
    write_part(run, '6b', {'test_elbo': v(95.0, 0.25, 10000)})
    if log is not None:
        with open(os.path.join(run, '6b', 'run.log'), 'w') as fh:
            fh.write(log)
    return dict(dir=os.path.join(run, '6b'))


def test_epoch_seconds_read_the_log_of_the_last_training_from_scratch(tmp_path):
    assert reader.epoch_seconds(logged_part(tmp_path)) == []                      # no log
    m = logged_part(tmp_path, epoch_line(1, 60, 500) + epoch_line(2, 60, 900) + '6b: resuming from checkpoint.pt\n'
                    + epoch_line(1, 60, 100) + epoch_line(2, 60, 220) + epoch_line(3, 60, 400))  # --fresh, then resumed
    assert reader.epoch_seconds(m) == [100, 120, 180]


def sitting_line(hardware):
    """engine's header line of a sitting, naming its hardware."""
    return (f'2026-12-01 00:00:00  6b: binary VAE, full profile on cpu ({hardware}), torch 2.14.1, 2 threads, '
            f'commit abc; settings {{"epochs": 60}}\n')


def test_epochs_on_two_cpu_models_get_a_median_each_never_one_across_them(tmp_path):
    m = logged_part(tmp_path, epoch_line(1, 60, 50)                     # before any header names the hardware
                    + sitting_line('CPU (Intel Xeon, x86_64), 2 cores')
                    + epoch_line(2, 60, 290) + epoch_line(3, 60, 530)
                    + sitting_line('CPU (AMD EPYC, x86_64), 2 cores') + epoch_line(4, 60, 1130)
                    + epoch_line(5, 60, 1730) + epoch_line(6, 60, 2390))
    assert reader.epoch_seconds_by_hardware(m) == [(None, [50]), ('CPU (Intel Xeon, x86_64), 2 cores', [240, 240]),
                                                    ('CPU (AMD EPYC, x86_64), 2 cores', [600, 600, 660])]
    assert reader.epoch_seconds(m) == [50, 240, 240, 600, 600, 660]
    assert tables.median_epoch(reader.epoch_seconds_by_hardware(m)[1:]) == (
        '4.0 min on CPU (Intel Xeon, x86_64), 2 cores (2 epochs); '
        '10.0 min on CPU (AMD EPYC, x86_64), 2 cores (3 epochs)')
    assert tables.median_epoch([('CPU (AMD EPYC, x86_64), 2 cores', [600, 660, 600])]) == '10.0 min'
    assert tables.median_epoch([('CPU (x86_64), 2 cores', [594]), ('CPU (AMD EPYC, x86_64), 2 cores', [510, 500])]) == (
        '9.9 min on CPU (x86_64), 2 cores (1 epoch); 8.4 min on CPU (AMD EPYC, x86_64), 2 cores (2 epochs)')
    # a run whose sittings name one hardware: epochs under older headers that name none ran on it too
    assert tables.median_epoch(reader.epoch_seconds_by_hardware(m)[:2], one=True) == '4.0 min'


def test_cpu_hours_give_measured_course_settings_runs_and_the_benchmark_rate_of_the_gaussian_vae(tmp_path):
    root = tmp_path / 'results'
    write_part(str(root / 'full'), '6b', {'test_elbo': v(95.0, 0.25, 10000)})
    (root / 'full' / '6b' / 'run.log').write_text(epoch_line(1, 60, 90) + epoch_line(2, 60, 300)
                                                   + epoch_line(3, 60, 420))
    write_part(str(root / 'cpu'), '6c', {'test_elbo': v(95.0, 0.25, 10000)})          # not course settings
    write_part(str(root / 'full-bf16'), '6a', {'test_nll': v(82.0, 0.2, 10000)})
    with open(root / 'full-bf16' / '6a' / 'metrics.json') as fh:
        on_gpu = dict(json.load(fh), sittings=[dict(device='cuda', hardware='NVIDIA H100', seconds=60.0)])
    with open(root / 'full-bf16' / '6a' / 'metrics.json', 'w') as fh:
        json.dump(on_gpu, fh)                                                         # trained on a GPU: not listed
    with open(root / 'bench_cpu.json', 'w') as fh:
        json.dump(dict(train_img_per_s=dict(gaussian_vae=25.0)), fh)
    with open(root / 'bench_cpu_bf16.json', 'w') as fh:
        json.dump(dict(precision='bf16', train_img_per_s=dict(gaussian_vae=50.0)), fh)
    text = tables.cpu_hours_markdown(reader.load_runs(str(root)), str(root))
    rows = [line for line in text.splitlines() if line.startswith('| 6')]
    # 600 s; median of 90, 210, 120 s
    assert rows == ['| 6b | course settings, float32 | 60 | 0.2 h | 2.0 min | 0 min |']
    # 60000 images at 50 and 25 images/s: 20 and 40 min an epoch, 20 epochs
    assert '20 min an epoch in bf16 and 40 min an epoch in float32, so 6.7 h and 13.3 h of training' in text
    assert text.startswith('The full-profile runs') and '5b and 5c (the Gaussian VAE) have no' in text
    write_part(str(root / 'full'), '5b', {'test_elbo': v(1500.0, 7.0, 10000)})
    write_part(str(root / 'full'), '5c', {'test_elbo': v(1500.0, 7.0, 10000)})
    text = tables.cpu_hours_markdown(reader.load_runs(str(root)), str(root))
    assert 'Gaussian VAE' not in text and '| 5b | course settings, float32 | 20 |' in text
    assert tables.cpu_hours_markdown([], str(tmp_path)) == 'No course-settings run has trained on a CPU yet.\n'


def test_unfinished_course_settings_parts_show_the_last_epoch_of_their_log(tmp_path):
    root = tmp_path / 'results'
    write_part(str(root / 'full'), '6b', {'test_elbo': v(95.0, 0.25, 10000)})           # finished: not listed
    (root / 'full' / '6d').mkdir(parents=True)
    (root / 'full' / '6d' / 'run.log').write_text('2026-12-01 00:00:00  6d: resuming\n' + epoch_line(1, 60, 90)
                                                  + epoch_line(2, 60, 300).replace('00:00:00', '01:02:03'))
    (root / 'full' / '6e-weak').mkdir()
    (root / 'full' / '6e-weak' / 'run.log').write_text('2026-12-01 00:00:00  6e-weak: header only\n')
    (root / 'cpu' / '6c').mkdir(parents=True)
    (root / 'cpu' / '6c' / 'run.log').write_text(epoch_line(1, 4, 90))                 # not course settings
    assert reader.progress(str(root / 'full' / '6d')) == dict(when='2026-12-01 01:02:03', epoch=2, epochs=60)
    assert reader.progress(str(root / 'full' / '6e-weak')) is None
    assert reader.progress(str(root / 'full' / '6a')) is None
    text = tables.unfinished_markdown(reader.load_runs(str(root)), str(root))
    assert f'6d (`{root}/full/6d`): epoch 2 of 60 done by 2026-12-01 01:02:03' in text
    assert f'6e-weak (`{root}/full/6e-weak`): started, no epoch done' in text
    assert text.endswith('Not started at the course settings: 5b, 5c, 6a, 6c, 6e-baseline, 6e-warmup, 6e-freebits.\n')
    assert '6b' not in text


def test_a_summary_row_names_every_device_and_hardware_a_run_trained_on():
    """A run begun on a CPU and finished on a GPU is named by both, not by its last sitting."""
    from reporting.summary import summary_rows
    m = dict(part='6a', profile='smoke', device='cuda', hardware='NVIDIA T4', epochs=2, train_seconds=30.0,
             model='m.pt', config=dict(model='pixelcnn', precision='fp32', is_samples=16),
             sittings=[dict(device='cpu', hardware='CPU (x86_64), 2 cores', seconds=20.0),
                       dict(device='cuda', hardware='NVIDIA T4', seconds=10.0)],
             values=dict(test_nll=dict(value=90.0, stderr=1.0, n_images=100)))
    row, = summary_rows([m], 'results')
    assert row['device'] == 'cpu + cuda' and row['hardware'] == 'CPU (x86_64), 2 cores + NVIDIA T4'
    assert row['train_seconds_by_hardware'] == {'CPU (x86_64), 2 cores': 20.0, 'NVIDIA T4': 10.0}


def test_the_students_profile_table_names_the_fastest_and_slowest_part_of_each_profile():
    """Each profile's row gives the quickest and the slowest part of the committed runs, with the
    hardware they ran on, and says so where nothing was measured (no GPU run yet)."""
    runs = [dict(profile='cpu', parts={p: dict(part=p, train_seconds=t, eval_seconds=60.0, device='cpu',
                                               hardware='CPU (x86_64), 2 cores') for p, t in (('6a', 600.0),
                                                                                               ('6c', 3000.0))})]
    table = writeup.profile_times(runs)
    row = next(line for line in table.splitlines() if line.startswith('| cpu |'))
    assert '6a 11 min – 6c 51 min; CPU (x86_64), 2 cores' in row and row.endswith('| not measured yet |')
    assert '| full | the course\'s settings | not measured yet | not measured yet |' in table
