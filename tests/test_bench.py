"""tools/bench.py: its FLOP accounting against the count by hand, its workloads against the engine's,
and the speed tables it renders from its JSON files (no timing is asserted)."""
import contextlib
import json
import os
import pathlib

import pytest
import torch

from engine import timing
from tools import bench
from reporting import tables
from engine import config
from engine import objectives

KEYS = ('pixelcnn', 'binary_vae', 'gaussian_vae', 'pixelvae', 'iaf_vae')


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on a shared machine two threads fighting for one core crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pixelcnn_training_step_flops_match_the_count_by_hand(monkeypatch):
    monkeypatch.setattr(bench, 'BATCH', 2)  # FLOPs per image do not depend on the batch
    device = torch.device('cpu')
    modules, loss = bench.engine_training('pixelcnn', device)  # the course size, as the benchmark times it
    step = timing.train_step(modules, loss, timing.binary_batch(bench.BATCH, device, seed=0))
    per_image = bench.count_flops(step) / bench.BATCH
    px, c = 28 * 28, 32
    embed = px * c * 9 * 9 * 2              # 9x9 type-A convolution, 1 -> 32 channels
    blocks = 18 * px * c * c * 3 * 3 * 2    # 9 residual blocks of two 3x3 convolutions, 32 -> 32
    out = px * c * 3 * 3 * 2                # 3x3 output convolution, 32 -> 1
    # backward: input and weight gradients (2x forward), except the input gradient of the first layer
    assert per_image == 3 * (embed + blocks + out) - embed


def test_this_implementations_workloads_train_the_engines_objective(monkeypatch):
    """The loss the benchmark times is objectives.objective on the networks of the part's configuration."""
    monkeypatch.setattr(bench, 'PROFILE', 'smoke')
    calls = []
    real = objectives.objective

    def spy(nets, cfg, x, eps, beta=1.0):
        calls.append((cfg, sorted(nets)))
        return real(nets, cfg, x, eps, beta)
    monkeypatch.setattr(bench, 'objective', spy)
    x = timing.binary_batch(2, 'cpu', seed=0)
    for name, part in bench.WORKLOADS.items():
        modules, loss = bench.engine_training(name, 'cpu', 'bf16' if name == 'pixelcnn' else 'fp32')
        assert torch.isfinite(loss(x))
        cfg, nets = calls[-1]
        assert cfg == config.config(part, 'smoke', precision=cfg['precision']) and len(modules) == len(nets)
        assert cfg['precision'] == ('bf16' if name == 'pixelcnn' else 'fp32')
    assert modules[1].autoregress is False  # iaf_vae (6d) has no PixelCNN
    _, nets = bench.engine('pixelvae', 'cpu')
    assert nets['decoder'].autoregress is True  # 6c timed with its PixelCNN on


def write_bench(res, ours, plain, **beside):
    (res / 'bench_cpu.json').write_text(json.dumps(ours))
    (res / 'bench_cpu_straightforward.json').write_text(json.dumps(plain))
    for suffix, values in beside.items():
        (res / f'bench_cpu_{suffix}.json').write_text(json.dumps(values))


def test_speed_table_sets_each_goal_against_the_measured_ceiling(tmp_path):
    train_rates = dict(pixelcnn=150.0, binary_vae=500.0, gaussian_vae=22.0, pixelvae=115.0, iaf_vae=345.0)
    plain = dict(pixelcnn=130.0, binary_vae=220.0, gaussian_vae=22.0, pixelvae=95.0, iaf_vae=225.0)
    per_image = {f'train_{k}': 1.0 for k in train_rates}
    per_image.update(is_binary_vae=90.0, is_pixelvae=100.0)
    write_bench(tmp_path, {'device': 'CPU (x86_64), 2 cores', 'train_img_per_s': train_rates,
                           'sample_s': dict(pixelcnn_49=0.65), 'is_img_per_s': dict(binary_vae=2.0, pixelvae=1.6)},
                {'train_img_per_s': plain, 'sample_s': dict(pixelcnn_49=78.0),
                 'is_img_per_s': dict(binary_vae=1.1, pixelvae=0.3)},
                flops={'ceiling_gflop_per_s': 300.0, 'gflop_per_image': per_image,
                       'layer_gflop_per_s': {k: 30.0 for k in per_image}})
    text = tables.speed_markdown(str(tmp_path))
    assert f'`{tmp_path}/bench_cpu.json` (CPU (x86_64), 2 cores):' in text   # the device the run measured
    row = next(line for line in text.splitlines() if 'training, images/s: gaussian_vae' in line)
    # goal 1.5 x 22 = 33 images/s; 22 images/s x 1 GFLOP = 22 GFLOP/s; bound 30 GFLOP/s / 1 GFLOP = 30 images/s
    assert '| 1.5x | 33.00 | 1 | 22 | 30 | 30.00 |' in row
    assert '300 GFLOP/s' in text and 'bench_cpu_flops.json' not in text


def test_speed_reading_names_met_and_unmet_goals_and_those_beyond_the_bound(tmp_path):
    per_image = {f'train_{k}': 1.0 for k in KEYS}
    per_image.update(is_binary_vae=1.0, is_pixelvae=1.0)
    rates = dict.fromkeys(per_image, 1000.0)
    rates['train_pixelcnn'] = 110.0   # the goal 2.5 x 50 = 125 images/s needs more than 110 / 1 GFLOP
    write_bench(tmp_path, {'train_img_per_s': dict(dict.fromkeys(KEYS, 100.0), pixelcnn=120.0),
                           'sample_s': dict(pixelcnn_49=1.0), 'is_img_per_s': dict(binary_vae=2.0, pixelvae=5.0)},
                {'train_img_per_s': dict.fromkeys(KEYS, 50.0), 'sample_s': dict(pixelcnn_49=50.0),
                 'is_img_per_s': dict(binary_vae=1.0, pixelvae=1.0)},
                flops={'ceiling_gflop_per_s': 300.0, 'gflop_per_image': per_image, 'layer_gflop_per_s': rates})
    line = next(t for t in tables.speed_markdown(str(tmp_path)).splitlines() if t.startswith('Goals met'))
    assert 'binary_vae (training, 2.0x of 1.5x)' in line and 'pixelcnn_49 (sampling 49 images, 50.0x of 20x)' in line
    assert 'Not met: pixelcnn (training, 2.4x of 2.5x)' in line
    assert 'For pixelcnn (training) the goal needs at least the bound' in line


def test_bf16_speed_and_accuracy_are_reported_beside_float32(tmp_path):
    write_bench(tmp_path, {'train_img_per_s': dict.fromkeys(KEYS, 100.0), 'sample_s': dict(pixelcnn_49=1.0),
                           'is_img_per_s': dict(binary_vae=2.0, pixelvae=1.0)},
                {'train_img_per_s': dict.fromkeys(KEYS, 50.0), 'sample_s': dict(pixelcnn_49=50.0),
                 'is_img_per_s': dict(binary_vae=1.0, pixelvae=0.5)},
                bf16={'train_img_per_s': dict.fromkeys(KEYS, 300.0)})
    for run, precision, value in (('cpu', None, 90.0), ('cpu-bf16', 'bf16', 90.5)):
        os.makedirs(tmp_path / run / '6a')
        cfg = dict(epochs=4, seed=0, **({'precision': precision} if precision else {}))  # fp32 saved without it
        (tmp_path / run / '6a' / 'metrics.json').write_text(json.dumps(dict(
            part='6a', epochs=3, config=cfg, values={'test_nll': dict(value=value, stderr=0.2, n_images=10000)})))
    text = tables.speed_markdown(str(tmp_path))
    assert text.count('| pixelcnn |') == 1                            # bf16 is its own table, not a bench table
    row = next(line for line in text.splitlines() if line.startswith('| pixelcnn |'))
    assert '| 300.00 | 100.00 | 3.0x | 6.0x | 2.5x |' in row
    assert '| 6a |' not in text                                       # the parity table is the README's
    run = next(line for line in tables.bf16_runs_markdown(str(tmp_path)).splitlines() if line.startswith('| 6a |'))
    assert run == '| 6a | test_nll | 90.50 ± 0.20 | 90.00 ± 0.20 | +0.50 ± 0.28 (unpaired) | yes | 10000 | 3 | yes |'


@pytest.mark.parametrize('shift,parity,reading', [(0.05, 'no', 'nats higher, a measurable difference.'),
                                                   (-0.05, 'yes', 'nats lower, a measurable difference.'),
                                                   (0.0, 'yes', '6a test_nll: no measurable difference.')])
def test_bf16_parity_is_paired_over_the_same_images_and_asks_only_not_worse(tmp_path, shift, parity, reading):
    """With per-image values the difference is paired: bfloat16 0.05 nats worse on every image is
    measurable (its paired standard error is tiny beside the two runs' own), 0.05 better is parity."""
    base = 90 + torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = 0.01 * torch.randn(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for run, values in (('cpu', base), ('cpu-bf16', base + shift + noise)):
        os.makedirs(tmp_path / run / '6a')
        (tmp_path / run / '6a' / 'metrics.json').write_text(json.dumps(dict(
            part='6a', epochs=4, config=dict(seed=0, precision='bf16' if 'bf16' in run else 'fp32'),
            values={'test_nll': dict(value=values.mean().item(), stderr=(values.std() / 20).item(), n_images=400)})))
        torch.save({'test_nll': values}, tmp_path / run / '6a' / 'per_image.pt')
    [(part, q, _, _, d)] = tables.bf16_parity(str(tmp_path))
    assert (part, q, d['paired'], d['n']) == ('6a', 'test_nll', True, [400])
    assert d['value'] == pytest.approx((shift + noise).mean().item()) and d['se'] == pytest.approx(
        noise.std().item() / 20)
    text = tables.bf16_runs_markdown(str(tmp_path))
    run = next(line for line in text.splitlines() if line.startswith('| 6a |'))
    assert f'(paired) | {parity} | 400 | 4 | yes |' in run and text.rstrip().endswith(reading)


def test_no_benchmark_no_table(tmp_path):
    assert tables.speed_markdown(str(tmp_path / 'none')) == 'No benchmark has been run yet.\n'


def test_bf16_units_are_read_from_the_cpu_flags(tmp_path):
    for flags, units in (('fpu avx512f amx_bf16 avx512_bf16 amx_tile', ('amx_bf16', 'avx512_bf16')),
                         ('fp asimd bf16 i8mm', ('bf16',)), ('fpu sse2 avx2 avx512f', ())):
        (tmp_path / 'cpuinfo').write_text(f'processor\t: 0\nflags\t\t: {flags}\n')
        assert config.bf16_units(str(tmp_path / 'cpuinfo')) == units


def test_precision_speeds_times_one_training_step_each_way():
    speeds = timing.precision_speeds('6b', 'smoke', 'cpu', repeats=1)
    assert set(speeds) == {'fp32', 'bf16'} and all(v > 0 for v in speeds.values())


def test_bench_runs_on_the_cpu_at_tiny_size_with_the_engines_settings(tmp_path, monkeypatch):
    """bench.main end to end (smoke networks, a few draws): this implementation's importance
    sampling runs inside float32_eval with the engine's batch for the device, the baseline outside."""
    for name, value in (('PROFILE', 'smoke'), ('M', 8), ('PLAIN_CHUNK', 4), ('SAMPLES', 2)):
        monkeypatch.setattr(bench, name, value)
    monkeypatch.setattr(timing, 'REPEATS', 1)
    monkeypatch.setattr(timing, 'WARMUP', 0)
    inside, calls = [], []

    @contextlib.contextmanager
    def spy_eval():
        inside.append(True)
        yield
        inside.pop()
    real = bench.importance_sampled_nll
    monkeypatch.setattr(bench, 'float32_eval', spy_eval)
    monkeypatch.setattr(bench, 'importance_sampled_nll', lambda *a, **k: calls.append((bool(inside), a[4:6])) or
                        real(*a, **k))
    paths = {k: str(tmp_path / f'{k}.json') for k in ('ours', 'plain')}
    out = bench.main(['--device', 'cpu', '--profile', 'smoke', '--is-images', '3', '--json', paths['ours'],
                      '--baseline-json', paths['plain']])
    assert calls and all(flag and chunk_batch == (100, 20) for flag, chunk_batch in calls)  # the cpu profile's pass
    ours = json.loads(pathlib.Path(paths['ours']).read_text())
    assert ours['settings'] == bench.engine_settings('cpu')
    assert '20 images x 100 draws = 2000 latents' in ours['settings']
    for key in ('ours', 'plain'):
        values = json.loads(pathlib.Path(paths[key]).read_text())
        assert set(values['train_img_per_s']) == set(KEYS) and set(values['is_img_per_s']) == {'binary_vae', 'pixelvae'}
        assert all(v > 0 for v in values['train_img_per_s'].values()) and values == {
            k: v for k, v in out[key].items()}


def test_on_cuda_the_engine_trains_under_its_cudnn_flags_and_samples_10000_latents_a_pass():
    assert bench.engine_is_batch('binary_vae', 'cuda') == (100, 100)  # the full profile's: 10,000 latents
    assert '100 images x 100 draws = 10000 latents' in bench.engine_settings('cuda')
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    with bench.engine_flags('cuda'):  # flags are set without a GPU; only their use needs one
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, True)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == saved
    with bench.engine_flags('cpu'):
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == saved
