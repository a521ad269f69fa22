"""Device honesty: the engine and the benchmark make every tensor on the device they run on, and
the benchmark runs end to end on the CPU and writes the files the speed tables read."""
import ast
import json
import os

import pytest
import torch

from engine import timing
from tools import bench
from reporting import tables
import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE_FILES = ('engine/config.py', 'engine/train.py', 'engine/evaluate.py', 'engine/figures.py', 'experiments.py',
                'tools/bench.py', 'engine/transfer.py', 'engine/subsets.py', 'engine/partial.py')
FACTORIES = {'zeros', 'ones', 'empty', 'full', 'rand', 'randn', 'randint', 'randperm', 'arange', 'tensor', 'eye',
             'linspace'}
MARKER = '# cpu:'  # on a line of the call, followed by why the tensor belongs on the CPU


def deviceless_calls(source, filename='<source>'):
    """'file:line torch.<factory>(...)' for each call of a tensor factory that passes no device=
    and carries no `# cpu: reason` comment on one of its lines."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == 'torch'
                and node.func.attr in FACTORIES):
            continue
        if any(k.arg == 'device' for k in node.keywords):
            continue
        span = lines[node.lineno - 1:node.end_lineno]
        if any(MARKER in line and line.split(MARKER, 1)[1].strip() for line in span):
            continue
        found.append(f'{filename}:{node.lineno} torch.{node.func.attr}(...)')
    return found


def test_the_lint_flags_factories_without_a_device_unless_marked_cpu_with_a_reason():
    source = '\n'.join([
        'a = torch.zeros(3)',
        'b = torch.randn(2, device=x.device)',
        'c = torch.zeros_like(x)',
        'd = torch.randperm(n, generator=g)  # cpu: the data order, from a CPU generator',
        'e = torch.arange(4)  # cpu:',
        'f = torch.tensor([1.0],',
        '                 dtype=torch.float64)  # cpu: plotted values',
        'g = x.new_zeros(3)',
    ])
    assert deviceless_calls(source, 'f.py') == ['f.py:1 torch.zeros(...)', 'f.py:5 torch.arange(...)']


def test_engine_and_benchmark_create_no_tensor_without_a_device():
    offenders = []
    for name in ENGINE_FILES:
        with open(os.path.join(ROOT, name)) as fh:
            offenders += deviceless_calls(fh.read(), name)
    assert not offenders, ('tensors created without device= (pass the device, or mark CPU-only data with '
                           f'`{MARKER} reason` on the line): ' + '; '.join(offenders))


@pytest.fixture
def tiny_bench(monkeypatch):
    """bench at seconds' sizes: the smoke profile's networks, small batches, one timed repetition,
    one thread (the test's machine may be shared; two threads fighting for one core crawl)."""
    for name, value in dict(PROFILE='smoke', BATCH=4, M=16, IS_CHUNK=8, IS_BATCH=2, PLAIN_CHUNK=8, SAMPLES=2,
                            CEILING=(8, 7, 2)).items():
        monkeypatch.setattr(bench, name, value)
    monkeypatch.setattr(timing, 'REPEATS', 1)
    monkeypatch.setattr(timing, 'WARMUP', 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield bench
    torch.set_num_threads(threads)


def test_bench_runs_on_the_cpu_and_writes_what_the_speed_tables_read(tiny_bench, tmp_path, capsys):
    paths = {key: tmp_path / f'bench_cpu{suffix}.json' for key, suffix in
             (('json', ''), ('baseline-json', '_straightforward'), ('flops-json', '_flops'), ('bf16-json', '_bf16'))}
    before = models.CHANNELS_LAST
    tiny_bench.main(['--device', 'cpu', '--profile', 'smoke', '--is-images', '2', '--no-channels-last']
                    + [a for key, path in paths.items() for a in (f'--{key}', str(path))])
    assert models.CHANNELS_LAST == before                     # the layout flag is restored
    ours, plain, flops, bf16 = (json.loads(p.read_text()) for p in paths.values())
    assert ours['device'].startswith('CPU') and ours['device'] in capsys.readouterr().out
    for values in (ours, plain):
        assert {group for group, _, _ in bench.BENCH_ROWS} == set(values) - {'device', 'settings'}
        for group, key, _ in bench.BENCH_ROWS:
            assert values[group][key] > 0
    assert set(bf16) == {'train_img_per_s'} and set(bf16['train_img_per_s']) == set(ours['train_img_per_s'])
    assert set(flops) == {'ceiling_gflop_per_s', 'gflop_per_image', 'layer_gflop_per_s'}
    assert set(flops['gflop_per_image']) == set(flops['layer_gflop_per_s']) == \
        {f'train_{k}' for k in ours['train_img_per_s']} | {f'is_{k}' for k in ours['is_img_per_s']}
    text = tables.speed_markdown(str(tmp_path))
    assert f'({ours["device"]}):' in text and 'Opt-in bfloat16 training' in text
    assert sum(line.startswith('| training, images/s: ') for line in text.splitlines()) == 5


def test_every_timer_waits_for_the_device(monkeypatch):
    events = []
    monkeypatch.setattr(timing, 'synchronize', lambda device: events.append('sync'))
    timing.in_turns({'a': lambda: events.append('a'), 'b': lambda: events.append('b')}, 'cpu', repeats=1, warmup=0)
    assert events == ['sync', 'a', 'sync', 'sync', 'b', 'sync']
    events.clear()
    timing.timed(lambda: events.append('f'), 'cpu', repeats=3)
    assert events == ['sync', 'f', 'sync'] * 3


def test_channels_last_is_restored_after_an_error():
    before = models.CHANNELS_LAST
    with pytest.raises(RuntimeError), bench.channels_last(not before):
        assert models.CHANNELS_LAST is (not before)
        raise RuntimeError
    assert models.CHANNELS_LAST == before


# ---------------------------------------------------------------------------------------------
# CUDA numerics: deterministic cuDNN without benchmark mode, and TF32 through one API only

class Flags:
    """Stands in for torch.backends.cudnn (with conv) or torch.backends.cuda.matmul: holds the flags
    the torch in question has, and logs every read and write of them by name."""

    def __init__(self, log, prefix, values, **children):
        for name, value in dict(_log=log, _prefix=prefix, _values=dict(values), **children).items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        if name not in self._values:
            raise AttributeError(name)
        self._log.append(('get', self._prefix + name))
        return self._values[name]

    def __setattr__(self, name, value):
        if name not in self._values:
            raise AttributeError(name)
        self._log.append(('set', self._prefix + name, value))
        self._values[name] = value

    def flags(self, **values):
        """torch.backends.cudnn.flags: sets every flag given (allow_tf32 included) and restores them."""
        import contextlib

        @contextlib.contextmanager
        def context():
            saved = {k: getattr(self, k) for k in values}
            for k, v in values.items():
                setattr(self, k, v)
            try:
                yield
            finally:
                for k, v in saved.items():
                    setattr(self, k, v)
        return context()


CUDNN = dict(enabled=False, benchmark=True, deterministic=False, allow_tf32=True)


def simulated_backends(monkeypatch, new_api):
    """torch.backends as a torch with (new_api) or without the per-operation fp32_precision API:
    (log, cudnn, matmul)."""
    log = []
    if new_api:
        cudnn = Flags(log, 'cudnn.', CUDNN, conv=Flags(log, 'cudnn.conv.', dict(fp32_precision='tf32')))
        matmul = Flags(log, 'matmul.', dict(allow_tf32=False, fp32_precision='none'))
    else:
        cudnn = Flags(log, 'cudnn.', CUDNN)
        matmul = Flags(log, 'matmul.', dict(allow_tf32=False))
    monkeypatch.setattr(torch.backends, 'cudnn', cudnn)
    monkeypatch.setattr(torch.backends.cuda, 'matmul', matmul)
    return log, cudnn, matmul


def tf32_flags_touched(log):
    """'legacy' and/or 'new': which TF32 API the logged reads and writes used."""
    return {('new' if name.endswith('fp32_precision') else 'legacy') for _, name, *_ in log if 'tf32' in name
            or name.endswith('fp32_precision')}


@pytest.mark.parametrize('new_api', [True, False])
@pytest.mark.parametrize('tf32', [True, False])
def test_cuda_numerics_are_deterministic_and_set_tf32_through_one_api(monkeypatch, new_api, tf32):
    from engine import evaluate
    log, cudnn, matmul = simulated_backends(monkeypatch, new_api)
    before = (dict(cudnn._values), dict(matmul._values))
    with evaluate.cuda_numerics(tf32):
        assert (cudnn._values['enabled'], cudnn._values['deterministic'], cudnn._values['benchmark']) == \
            (True, True, False)
        if new_api:
            assert cudnn.conv._values['fp32_precision'] == matmul._values['fp32_precision'] == \
                ('tf32' if tf32 else 'ieee')
        else:
            assert cudnn._values['allow_tf32'] is matmul._values['allow_tf32'] is tf32
    assert tf32_flags_touched(log) == {'new' if new_api else 'legacy'}
    assert (cudnn._values, matmul._values) == before                  # every flag restored


def test_training_on_cuda_runs_with_deterministic_kernels_and_tf32(monkeypatch):
    from engine import train
    log, cudnn, matmul = simulated_backends(monkeypatch, new_api=True)
    seen = []

    class Stub:
        def __init__(self, *args):
            self.state = {}

        def resume(self):
            pass

        def run(self, stop_at):
            seen.append((cudnn._values['deterministic'], cudnn._values['benchmark'],
                         cudnn.conv._values['fp32_precision'], matmul._values['fp32_precision']))
            return True

    monkeypatch.setattr(train, 'Training', Stub)
    train.train('6b', {}, {}, 'out', 'cuda', False)
    assert seen == [(True, False, 'tf32', 'tf32')] and tf32_flags_touched(log) == {'new'}


# ---------------------------------------------------------------------------------------------
# No host synchronisation in a training step on a GPU

HOST_READS = ('item', 'tolist', 'numpy', 'cpu', '__bool__', '__float__', '__int__')  # each waits for the device


@pytest.fixture
def host_transfers(monkeypatch):
    """Counts, by name, what in a training step would wait for a GPU's queue, on the CPU: a read of a
    tensor's value on the host (HOST_READS), a tensor built from host data (torch.tensor) and an
    explicit move to a device (Tensor.to(device)), whose source in pageable host memory makes the
    copy synchronous (unless non_blocking). Returns the list of names, to be cleared before the
    steps counted."""
    seen = []

    def counting(name, real):
        def call(*args, **kwargs):
            seen.append(name)
            return real(*args, **kwargs)
        return call

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(f'Tensor.{name}', getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch, 'tensor', counting('torch.tensor', torch.tensor))
    to = torch.Tensor.to

    def moved(self, *args, **kwargs):  # non_blocking: from pinned memory or on the device, asynchronous
        if any(isinstance(a, (str, torch.device)) for a in list(args) + list(kwargs.values())) \
                and not kwargs.get('non_blocking'):
            seen.append('Tensor.to(device)')
        return to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, 'to', moved)
    return seen


@pytest.mark.parametrize('part,overrides', [('6a', {}), ('6b', {}), ('5b', {}), ('6e-warmup', {}),
                                            ('6e-warmup', dict(compile_train=True)), ('6b', dict(precision='fp16'))])
def test_a_training_step_reads_nothing_from_a_gpu(tmp_path, monkeypatch, host_transfers, part, overrides):
    """With the CPU standing in for a GPU (objectives.FREE_READS emptied: the engine then reads the device
    only every SYNC_EVERY steps, as on CUDA), steps after the first read nothing on the host and copy
    nothing from it."""
    from engine import config
    from engine import objectives, train
    monkeypatch.setattr(objectives, 'FREE_READS', ())
    cfg = config.config(part, 'smoke', batch_size=20, **overrides)
    torch.manual_seed(0)
    nets = train.build(config.model_spec(cfg), 'cpu')
    training = train.Training(part, cfg, nets, str(tmp_path), 'cpu', False)
    assert training.check_every == train.SYNC_EVERY
    x_train = train.load_data(cfg, train=True)
    training.start_epoch(0, len(x_train))
    training.step(x_train, 0, 10)                          # Adam's state and any compilation are made here
    host_transfers.clear()
    for b in range(1, 4):
        training.step(x_train, b, 10)
    assert host_transfers == []
    training.flush()                                       # the numbers are read every SYNC_EVERY steps
    assert len(training.state['history']['loss']) == 4 and host_transfers


def test_where_losses_do_not_check_each_step_the_training_data_is_checked_once(tmp_path, monkeypatch):
    """Raw 0-255 pixels: losses.py would refuse them at the first step; where its checks are skipped
    (a GPU) the run refuses them when it loads them, naming the range found."""
    from engine import config
    from engine import objectives, train
    monkeypatch.setattr(objectives, 'FREE_READS', ())
    monkeypatch.setattr(train, 'load_data', lambda cfg, train: torch.full((20, 1, 28, 28), 255.0))
    cfg = config.config('6b', 'smoke', batch_size=10)
    training = train.Training('6b', cfg, train.build(config.model_spec(cfg), 'cpu'), str(tmp_path), 'cpu', False)
    with pytest.raises(ValueError, match=r'training images must lie in \[0, 1\], got values in \[255, 255\]'):
        training.run()
    assert training.state['step'] == 0


@pytest.mark.parametrize('part', ['6a', '5c', '6e-freebits'])
def test_the_objective_without_per_step_checks_is_the_same_objective(monkeypatch, part):
    """loss_on's vmap over a batch of one batch (the path of a GPU) gives the objective and terms of
    the direct call, and its gradients to rounding."""
    from engine import config
    from engine import objectives, train
    cfg = config.config(part, 'smoke')
    torch.manual_seed(0)
    nets = train.build(config.model_spec(cfg), 'cpu')
    x = train.load_data(cfg, train=True)[:6]
    eps = torch.randn(6, 49, generator=torch.Generator().manual_seed(1))
    params = [p for net in nets.values() for p in net.parameters()]
    results = []
    for free in (('cpu',), ()):
        monkeypatch.setattr(objectives, 'FREE_READS', free)
        terms = objectives.objective(nets, cfg, x, eps, 0.5)
        results.append((torch.stack(terms).detach(), torch.autograd.grad(terms[0], params, allow_unused=True)))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
    for g1, g2 in zip(ga, gb, strict=True):
        assert (g1 is None) == (g2 is None)
        if g1 is not None:
            torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
