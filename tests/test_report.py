"""report.py writes what the runs' files say: values and standard errors come from metrics.json."""
import json
import os

import report


def write_part(root, part, values, title='t'):
    os.makedirs(os.path.join(root, part), exist_ok=True)
    m = dict(part=part, title=title, profile='cpu', device='cpu', epochs=3, train_seconds=600.0,
             values=values, figures={})
    with open(os.path.join(root, part, 'metrics.json'), 'w') as fh:
        json.dump(m, fh)


def test_readme_and_latex_carry_the_measured_numbers(tmp_path):
    root = str(tmp_path / 'results')
    res = os.path.join(root, 'cpu')
    write_part(res, '6b', {'test_elbo': dict(value=95.4321, stderr=0.25, n_images=10000),
                           'test_nll_is1000': dict(value=90.1234, stderr=0.31, n_images=1000, M=1000),
                           'kl': dict(value=20.5, stderr=0.1, n_images=10000)})
    write_part(res, '6d', {'test_elbo': dict(value=93.0, stderr=0.2, n_images=10000),
                           'test_nll_is1000': dict(value=89.0, stderr=0.3, n_images=1000, M=1000)})
    with open(os.path.join(root, 'bench_cpu.json'), 'w') as fh:
        json.dump({'train_img_per_s': dict(pixelcnn=300.0, binary_vae=1.0, gaussian_vae=1.0, pixelvae=1.0, iaf_vae=1.0),
                   'sample_s': dict(pixelcnn_49=0.5), 'is_img_per_s': dict(binary_vae=4.0, pixelvae=8.0)}, fh)
    with open(os.path.join(root, 'bench_cpu_straightforward.json'), 'w') as fh:
        json.dump({'train_img_per_s': dict(pixelcnn=100.0, binary_vae=1.0, gaussian_vae=1.0, pixelvae=1.0, iaf_vae=1.0),
                   'sample_s': dict(pixelcnn_49=50.0), 'is_img_per_s': dict(binary_vae=2.0, pixelvae=1.0)}, fh)
    readme = tmp_path / 'README.md'
    readme.write_text(f'x\n{report.SPEED_BEGIN}\nold\n{report.SPEED_END}\n{report.BEGIN}\nold\n{report.END}\n')
    tex = tmp_path / 'results.tex'
    metrics = report.load_metrics(res)
    report.latex(metrics, res, str(tex))
    report.update_readme(str(readme), metrics, res)
    text = readme.read_text()
    assert '90.12 ± 0.31' in text and '95.43 ± 0.25' in text and 'old' not in text
    assert '| 1000 |' in text                         # the number of test images travels with the value
    assert '3.0x' in text and '100.0x' in text         # speed-ups computed from the two JSON files
    assert '89.00 $\\pm$ 0.30' in tex.read_text()
    assert '6d: what IAF buys' in text                 # findings are written from the numbers present


def test_remedies_table_and_reading_follow_the_numbers(tmp_path):
    res = str(tmp_path / 'results')

    def v(value, stderr, n=500):
        return dict(value=value, stderr=stderr, n_images=n)

    def remedy(part, nll, kl, au):
        write_part(res, part, {'test_elbo': v(nll + 5, 0.3), 'test_nll_is1000': dict(v(nll, 0.5), M=1000),
                               'kl': v(kl, 0.01), 'active_units': dict(value=au, stderr=None, n_images=500)},
                   title=f'remedy {part}')

    remedy('6e-baseline', 90.0, 0.05, 0)   # collapsed
    remedy('6e-warmup', 90.3, 0.4, 0)      # collapsed too
    remedy('6e-freebits', 91.0, 6.0, 12)   # alive, 1 nat worse than the baseline
    remedy('6e-weak', 95.0, 20.0, 30)      # alive, much worse
    write_part(res, '6a', {'test_nll': v(85.0, 0.2, 10000)})
    metrics = report.load_metrics(res)
    table = report.remedies_markdown(metrics)
    assert table.count('| remedy 6e-') == 4 and '12 of 49' in table and '91.00 ± 0.50' in table
    reading = report.remedies_reading(metrics)
    assert '2 of 4 keep the latent in use' in reading and '6e-freebits, 6e-weak' in reading
    assert 'Of these, 6e-freebits has the lowest' in reading
    assert '+1.00 ± 0.71 nats against the unremedied baseline' in reading  # independent errors
    assert 'within two standard errors' in reading
    assert 'is worse than the PixelCNN alone (6a)' in reading
    assert os.path.exists(report.write_remedies(metrics, res))
    # no remedy alive: the reading says so instead of naming a winner
    remedy('6e-freebits', 91.0, 0.5, 0)
    remedy('6e-weak', 95.0, 0.9, 0)
    assert 'No configuration kept the KL term' in report.remedies_reading(report.load_metrics(res))


def test_speed_table_sets_each_goal_against_the_measured_ceiling(tmp_path):
    res = tmp_path / 'results'
    res.mkdir()
    train = dict(pixelcnn=150.0, binary_vae=500.0, gaussian_vae=22.0, pixelvae=115.0, iaf_vae=345.0)
    plain = dict(pixelcnn=130.0, binary_vae=220.0, gaussian_vae=22.0, pixelvae=95.0, iaf_vae=225.0)
    (res / 'bench_cpu.json').write_text(json.dumps({'train_img_per_s': train, 'sample_s': dict(pixelcnn_49=0.65),
                                                    'is_img_per_s': dict(binary_vae=2.0, pixelvae=1.6)}))
    (res / 'bench_cpu_straightforward.json').write_text(json.dumps(
        {'train_img_per_s': plain, 'sample_s': dict(pixelcnn_49=78.0), 'is_img_per_s': dict(binary_vae=1.1, pixelvae=0.3)}))
    per_image = {f'train_{k}': 1.0 for k in train}
    per_image.update(is_binary_vae=90.0, is_pixelvae=100.0)
    (res / 'bench_cpu_flops.json').write_text(json.dumps({'ceiling_gflop_per_s': 300.0, 'gflop_per_image': per_image,
                                                          'gflop_per_s': {},
                                                          'layer_gflop_per_s': {k: 30.0 for k in per_image}}))
    text = report.speed_markdown(str(res))
    row = next(line for line in text.splitlines() if 'training, images/s: gaussian_vae' in line)
    # goal 1.5 x 22 = 33 images/s; 22 images/s x 1 GFLOP = 22 GFLOP/s; bound 30 GFLOP/s / 1 GFLOP = 30 images/s
    assert '| 1.5x | 33.00 | 1 | 22 | 30 | 30.00 |' in row
    assert '300 GFLOP/s' in text and 'bench_cpu_flops.json' not in text


def test_kl_estimator_verdict_follows_the_difference_and_its_error():
    def verdict(b, c):
        metrics = [dict(part='5b', values={'test_elbo': dict(value=b, stderr=5.0, n_images=100)}),
                   dict(part='5c', values={'test_elbo': dict(value=c, stderr=5.0, n_images=100)})]
        return dict(report.findings(metrics))['5c: closed-form vs Monte-Carlo KL']
    assert 'statistically indistinguishable' in verdict(1500.0, 1510.0)   # 10 < 2 * 7.07
    assert 'worse test bound' in verdict(1500.0, 1520.0)
    better = verdict(1520.0, 1500.0)
    assert 'better test bound' in better and 'not measured' in better


def test_bf16_speed_and_accuracy_are_reported_beside_float32(tmp_path):
    res = tmp_path / 'results'
    res.mkdir()
    keys = ('pixelcnn', 'binary_vae', 'gaussian_vae', 'pixelvae', 'iaf_vae')
    (res / 'bench_cpu.json').write_text(json.dumps({'train_img_per_s': dict.fromkeys(keys, 100.0),
                                                    'sample_s': dict(pixelcnn_49=1.0),
                                                    'is_img_per_s': dict(binary_vae=2.0, pixelvae=1.0)}))
    (res / 'bench_cpu_straightforward.json').write_text(json.dumps(
        {'train_img_per_s': dict.fromkeys(keys, 50.0), 'sample_s': dict(pixelcnn_49=50.0),
         'is_img_per_s': dict(binary_vae=1.0, pixelvae=0.5)}))
    (res / 'bench_cpu_bf16.json').write_text(json.dumps({'precision': 'bf16',
                                                         'train_img_per_s': dict.fromkeys(keys, 300.0)}))
    cfg = dict(epochs=4, seed=0)
    for run, precision, value in ((res / 'cpu', None, 90.0), (res / 'cpu-bf16', 'bf16', 90.5)):
        write_part(str(run), '6a', {'test_nll': dict(value=value, stderr=0.2, n_images=10000)})
        path = run / '6a' / 'metrics.json'
        m = json.loads(path.read_text())
        m['config'] = dict(cfg, precision=precision) if precision else dict(cfg)  # fp32 run saved without the key
        path.write_text(json.dumps(m))
    text = report.speed_markdown(str(res))
    assert text.count('| pixelcnn |') == 1                            # bf16 is its own table, not a bench table
    row = next(line for line in text.splitlines() if line.startswith('| pixelcnn |'))
    assert '| 300.00 | 100.00 | 3.0x | 6.0x | 2.5x |' in row
    run = next(line for line in text.splitlines() if line.startswith('| 6a |'))
    assert '| 90.50 ± 0.20 | 90.00 ± 0.20 | +0.50 ± 0.28 | 10000 |' in run and run.endswith('| yes |')


def test_verification_counts_only_checks_of_the_values_reported_now(tmp_path):
    root = tmp_path / 'results'
    res = root / 'cpu'
    write_part(str(res), '6b', {'test_elbo': dict(value=95.0, stderr=0.2, n_images=10000),
                                'test_nll_is1000': dict(value=90.0, stderr=0.3, n_images=1000, M=1000),
                                'kl': dict(value=20.0, stderr=0.1, n_images=10000)})
    checks = [dict(part='6b', quantity='test_elbo', reported=95.0, ok=True, seconds=30.0),
              dict(part='6b', quantity='test_nll_is1000', reported=90.0, ok=False, seconds=400.0),
              dict(part='6b', quantity='kl', reported=19.0, ok=True, seconds=20.0)]  # checked against an older run
    checks.append(dict(checks[0], profile='full', reported=95.0, ok=False))  # another run directory's check
    (root / 'verify.json').write_text(json.dumps(checks))
    text = report.verification(report.load_metrics(str(res)), str(res))
    assert text.startswith('1 of the 3 numbers')
    assert 'did not agree: 6b test_nll_is1000' in text and '1 not checked against their current value' in text
    assert report.verification([], str(tmp_path / 'none')) is None


def test_speed_reading_names_met_and_unmet_goals_and_those_beyond_the_bound(tmp_path):
    res = tmp_path / 'results'
    res.mkdir()
    keys = ('pixelcnn', 'binary_vae', 'gaussian_vae', 'pixelvae', 'iaf_vae')
    (res / 'bench_cpu.json').write_text(json.dumps({'train_img_per_s': dict(dict.fromkeys(keys, 100.0), pixelcnn=120.0),
                                                    'sample_s': dict(pixelcnn_49=1.0),
                                                    'is_img_per_s': dict(binary_vae=2.0, pixelvae=5.0)}))
    (res / 'bench_cpu_straightforward.json').write_text(json.dumps(
        {'train_img_per_s': dict.fromkeys(keys, 50.0), 'sample_s': dict(pixelcnn_49=50.0),
         'is_img_per_s': dict(binary_vae=1.0, pixelvae=1.0)}))
    per_image = {f'train_{k}': 1.0 for k in keys}
    per_image.update(is_binary_vae=1.0, is_pixelvae=1.0)
    rates = dict.fromkeys(per_image, 1000.0)
    rates['train_pixelcnn'] = 110.0   # the goal 2.5 x 50 = 125 images/s needs more than 110 / 1 GFLOP
    (res / 'bench_cpu_flops.json').write_text(json.dumps({'ceiling_gflop_per_s': 300.0, 'gflop_per_image': per_image,
                                                          'gflop_per_s': {}, 'layer_gflop_per_s': rates}))
    line = next(t for t in report.speed_markdown(str(res)).splitlines() if t.startswith('Goals met'))
    assert 'binary_vae (training, 2.0x of 1.5x)' in line and 'pixelcnn_49 (sampling 49 images, 50.0x of 20x)' in line
    assert 'Not met: pixelcnn (training, 2.4x of 2.5x)' in line
    assert 'For pixelcnn (training) the goal needs at least the bound' in line
