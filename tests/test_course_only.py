"""A models.py and losses.py that follow the course framework's API only (tests/fixtures/course_only,
the stub's shape filled in with working code) train with the engine and compare against the
reference: this project's extra constructor arguments are passed only where a part needs another
value than the course's, and such a part is refused in one sentence (engine/student.py); the calls
beyond the course's API (encode, reparameterize, latent_logits, pixel_logits, sample with uniforms)
go through the course's forward and sample. Three variants of the file, as students make them:
the 1/2 dropped from the closed-form KL, a type-A mask that keeps the centre tap, the code
reformatted. And compile_train keeps compiling in a process that trains several parts."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import experiments as E
from engine import config as C
from engine import evaluate as V
from engine import figures
from engine import student
from engine import train as T
from engine import modelfiles as MF
from engine import objectives as O

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COURSE_ONLY = os.path.join(ROOT, 'tests', 'fixtures', 'course_only')
REFERENCE_PARTS = ('5b', '5c', '6a', '6b')  # the smoke parts that need none of this project's extras
REFUSED = ('6c', '6d', '6e-baseline', '6e-warmup', '6e-freebits', '6e-weak')


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path):
    with open(path) as fh:
        return fh.read()


@pytest.fixture
def course_only(monkeypatch):
    """The engine in this process on the course-only models.py and losses.py: (models, losses)."""
    m = load('course_only_models', os.path.join(COURSE_ONLY, 'models.py'))
    losses_ = load('course_only_losses', os.path.join(COURSE_ONLY, 'losses.py'))
    monkeypatch.setattr(student, 'models', m)
    monkeypatch.setattr(figures, 'models', m)
    for module in (O, V):
        monkeypatch.setattr(module, 'losses', losses_)
    return m, losses_


# ---------------------------------------------------------------------------------------------
# Building: the course's arguments only, and one sentence where a part needs more

def test_a_course_only_class_gets_the_course_arguments_only(course_only):
    m, _ = course_only
    nets = T.build(C.model_spec(C.config('6b', 'smoke')), 'cpu')  # layout 'course', iaf_depth 1 without flows
    assert type(nets['encoder']) is m.VAEEncoder and type(nets['decoder']) is m.DiscreteVAEDecoder
    assert len(nets['encoder'].flows) == 0 and not hasattr(nets['decoder'], 'pixelcnn')
    full = T.build(C.model_spec(C.config('6e-baseline', 'full')), 'cpu')  # the course's own sizes: no extra differs
    assert len(full['encoder'].flows) == 8 and len(full['decoder'].pixelcnn.resnet) == 9
    with pytest.raises(student.NeedsExtrasError, match=r'models\.VAEEncoder\(iaf_depth=1\), where the course\'s '
                                                        r'VAEEncoder has IAF steps of depth 9'):
        student.construct('VAEEncoder', dict(capacity=8, depth=1, flows=2, iaf_depth=1, layout='course'))
    with pytest.raises(student.NeedsExtrasError, match=r"layout='v1'"):
        MF.load_models({'pixelcnn': dict(cls='PixelCNN', kwargs=dict(capacity=8, depth=1), state_dict={})}, 'cpu',
                      False)  # a model file from before layouts: layout v1, which the course's class cannot build


def test_this_projects_classes_are_built_as_before():
    spec = C.model_spec(C.config('6e-weak', 'smoke'))
    nets = T.build(spec, 'cpu')
    assert nets['encoder'].flows[0].resnet.__len__() == 1 and len(nets['decoder'].pixelcnn.resnet) == 0
    assert all(not student.needed_extras(C.model_spec(C.config(p, profile)), C.config(p, profile))
               for p in C.PARTS for profile in C.PROFILES)


def test_a_part_that_needs_an_extra_is_refused_in_one_sentence(course_only):
    for part in REFERENCE_PARTS:
        C.check_extras(part, 'smoke', C.config(part, 'smoke'))
    said = {}
    for part in REFUSED:
        with pytest.raises(student.NeedsExtrasError) as err:
            C.check_extras(part, 'smoke', C.config(part, 'smoke'))
        said[part] = str(err.value)
        assert said[part].startswith(f'{part} needs models.') and said[part].count('. ') == 0, said[part]
        assert "the course's settings: 5b, 5c, 6a, 6b, 6c, 6d, 6e-baseline, 6e-warmup)" in said[part]
    assert 'models.DiscreteVAEDecoder(pixelcnn_capacity=8, pixelcnn_depth=1)' in said['6c']
    assert 'iaf_depth' not in said['6c'] and 'pixelcnn' not in said['6d']  # only what shapes the part's networks
    assert 'pixelcnn_depth=0' in said['6e-weak'] and 'per-dimension terms of log q(z|x)' in said['6e-freebits']
    weak = r'^6e-weak needs models\.DiscreteVAEDecoder\(pixelcnn_depth=1\)'
    with pytest.raises(student.NeedsExtrasError, match=weak):
        C.check_extras('6e-weak', 'full', C.config('6e-weak', 'full'))


# ---------------------------------------------------------------------------------------------
# The engine's calls beyond the course's API, through the course's forward and sample

def small_vae(m, flows=2, autoregress=True):
    torch.manual_seed(0)
    f = m.VAEEncoder(capacity=4, depth=1, flows=flows)
    g = m.DiscreteVAEDecoder(capacity=4, depth=1, autoregress=autoregress)
    if autoregress:
        g.pixelcnn = m.PixelCNN(capacity=4, depth=1)  # the course's attribute; smaller is faster
        g.autoregress = True
    for p in [*f.parameters(), *g.parameters()]:
        p.data.normal_(0, 0.1)
    return f, g


def test_the_engine_reaches_a_course_only_file_through_its_course_api(course_only):
    m, _ = course_only
    f, g = small_vae(m)
    x = torch.bernoulli(torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    eps = torch.randn(3, 49, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z, logqzx, mu, logvar = f(x, eps.view(3, 1, 7, 7))
        h, mu2, logvar2 = student.fast(f, 'encode')(x)
        z2, logqzx2 = student.fast(f, 'reparameterize')(h, mu2, logvar2, eps)
        for a, b in ((z, z2), (logqzx, logqzx2), (mu, mu2), (logvar, logvar2)):
            torch.testing.assert_close(a, b)
        both = student.fast(g, 'latent_logits')(z) + student.fast(g, 'pixel_logits')(x)
        torch.testing.assert_close(both, g(z, x))  # the PixelVAE decoder's two terms
        assert g.autoregress is True
        g.autoregress = False
        torch.testing.assert_close(student.fast(g, 'latent_logits')(z), g(z))
        assert student.fast(g, 'pixel_logits')(x).shape == ()
    with pytest.raises(student.NeedsExtrasError, match='per-dimension terms'):
        student.posterior(f, x, eps, per_dim=True)


class CourseSampler(torch.nn.Module):
    """A course-API sampler (sample(n), drawing from torch's generator), quicker than a PixelCNN's."""

    def sample(self, n=49):
        return torch.bernoulli(torch.full((n, 1, 28, 28), 0.5))


def test_a_course_sampler_draws_the_same_images_for_the_same_uniforms():
    u = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    sampler = student.fast(CourseSampler(), 'sample')
    state = torch.get_rng_state()
    first = sampler(2, uniforms=u)
    assert torch.equal(torch.get_rng_state(), state)  # torch's generator as it was
    assert torch.equal(first, sampler(2, uniforms=u)) and first.shape == (2, 1, 28, 28)
    assert not torch.equal(first, sampler(2, uniforms=torch.rand(2, 1, 28, 28)))


def test_methods_of_a_course_only_class_are_never_taken_for_the_engines(course_only):
    """A student's own helper may carry a name the engine uses, with another meaning: the engine
    calls a class that is not this project's through the course's API only."""
    m, _ = course_only

    class Encoder(m.VAEEncoder):
        def encode(self, x):  # a student's helper: (mu, logvar), no features
            raise AssertionError('the engine called the student\'s encode')

    f = Encoder(capacity=4, depth=1)
    x = torch.rand(2, 1, 28, 28)
    h, mu, logvar = student.fast(f, 'encode')(x)
    assert h is x and mu.shape == logvar.shape == (2, 49)


def test_the_training_objective_of_a_course_only_file_is_its_forward_and_losses(course_only):
    m, losses_ = course_only
    f, g = small_vae(m, flows=2, autoregress=True)
    nets = dict(encoder=f, decoder=g)
    cfg = C.config('6e-baseline', 'full')
    x = torch.bernoulli(torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    eps = torch.randn(4, 49, generator=torch.Generator().manual_seed(2))
    loss, recon, kl = O.objective(nets, cfg, x, eps, 0.5)
    z, logqzx, _, _ = f(x, eps.view(4, 1, 7, 7))
    by_hand = losses_.discrete_output_elbo(g(z, x), x, z, logqzx)
    torch.testing.assert_close(torch.stack([recon, kl]), torch.stack(by_hand))
    torch.testing.assert_close(loss, recon + 0.5 * kl)
    with pytest.raises(student.NeedsExtrasError, match='free bits needs the per-dimension terms'):
        O.objective(nets, dict(cfg, free_bits=0.5), x, eps)


def test_importance_sampling_of_a_course_only_pixelvae_is_the_courses_loop(course_only):
    m, _ = course_only
    f, g = small_vae(m, flows=2, autoregress=True)
    x = torch.bernoulli(torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    eps = torch.randn(3, 6, 49, generator=torch.Generator().manual_seed(2))
    fast = V.importance_sampled_nll(f, g, x, samples=6, chunk=4, batch=2, eps=eps)
    torch.testing.assert_close(fast, V.importance_sample_naive(f, g, x, eps, chunk=4))
    au = V.active_units(f, x, samples=2, seed=0)
    assert 0 <= au['value'] <= 49


# ---------------------------------------------------------------------------------------------
# The command line on a checkout whose models.py and losses.py are the course-only ones

def kl_without_half(models, losses):
    changed = losses.replace('divergence = 0.5 * (mu.pow(2)', 'divergence = (mu.pow(2)')
    assert changed != losses
    return models, changed


def type_a_mask_keeping_the_centre(models, losses):
    changed = models.replace("kw // 2 + (mask_type == 'B'):] = 0", 'kw // 2 + 1:] = 0')
    assert changed != models
    return changed, losses


def reformatted(models, losses):
    """Two-space indents instead of four: the same code, another file."""
    def two(text):
        return re.sub(r'(?m)^((?:    )+)', lambda g: '  ' * (len(g.group(1)) // 4), text)
    return two(models), two(losses)


def copy_checkout(repo):
    """The repository's code (not its results), the course_api tests and a link to its data in repo."""
    repo.mkdir()
    for name in os.listdir(ROOT):
        if name.endswith('.py') or name == 'pytest.ini':
            shutil.copy(os.path.join(ROOT, name), repo)
    for folder in ('engine', 'reporting', 'tools'):
        shutil.copytree(os.path.join(ROOT, folder), repo / folder, ignore=shutil.ignore_patterns('__pycache__'))
    (repo / 'tests').mkdir()
    for name in ('conftest.py', 'course.py', 'test_models.py', 'test_losses.py'):
        shutil.copy(os.path.join(ROOT, 'tests', name), repo / 'tests')
    os.symlink(os.path.join(ROOT, 'data'), repo / 'data')


@pytest.fixture(scope='module')
def checkout(tmp_path_factory):
    """A checkout with the reference's smoke runs of the parts a course-only file can train."""
    repo = tmp_path_factory.mktemp('course_only') / 'repo'
    copy_checkout(repo)
    for part in REFERENCE_PARTS:
        E.run_part(part, profile='smoke', device='cpu', results_dir=str(repo / 'results'), progress=False)
    return repo


def student_checkout(checkout, tmp_path, variant=None):
    """A copy of the checkout whose models.py and losses.py are the course-only ones (changed by variant)."""
    repo = tmp_path / 'repo'
    shutil.copytree(checkout, repo, symlinks=True)
    files = [read(os.path.join(COURSE_ONLY, name)) for name in ('models.py', 'losses.py')]
    for name, text in zip(('models.py', 'losses.py'), variant(*files) if variant else files, strict=True):
        (repo / name).write_text(text)
    return repo


def cli(repo, *args):
    run = subprocess.run([sys.executable, 'experiments.py', *args], cwd=repo, capture_output=True, text=True,
                         timeout=900, env=dict(os.environ, HW2_DEVICE='cpu'))
    return run.returncode, run.stdout + run.stderr


def compare_rows(repo):
    code, out = cli(repo, 'compare')
    assert code == 0 and 'Traceback' not in out, out[-3000:]
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if line.startswith('| smoke |') and len(cells) == 7:
            rows[(cells[1], cells[2])] = cells[6]
    return rows, out


def values(repo, part, where='mine'):
    path = repo / 'results' / (f'mine/smoke/{part}' if where == 'mine' else f'smoke/{part}') / 'metrics.json'
    return {q: v['value'] for q, v in json.loads(path.read_text())['values'].items()}


def test_a_course_only_file_trains_every_part_it_can_and_compares(checkout, tmp_path):
    repo = student_checkout(checkout, tmp_path)
    code, out = cli(repo, 'all', '--profile', 'smoke', '--parts', ','.join(REFERENCE_PARTS + ('6c', '6d')),
                    '--no-progress')
    assert 'Traceback' not in out, out[-5000:]
    assert code == 1 and '2 of 6 parts did not run (6c, 6d)' in out, out[-3000:]
    table = out[out.index('part         outcome'):].splitlines()
    outcome = {line.split()[0]: line.split()[1] for line in table[1:7]}
    assert outcome == {'5b': 'ran', '5c': 'ran', '6a': 'ran', '6b': 'ran', '6c': 'skipped', '6d': 'skipped'}, table
    assert '6d needs models.VAEEncoder(iaf_depth=1)' in out and 'cannot train 6d here' in out
    rows, text = compare_rows(repo)
    assert {part for part, _ in rows} == set(REFERENCE_PARTS), text
    for part in ('5b', '5c', '6b'):  # the course's networks and initialisation: the reference's numbers
        mine, reference = values(repo, part), values(repo, part, 'reference')
        assert all(abs(mine[q] - reference[q]) < 0.05 for q in reference if q != 'active_units'), (part, mine)


def test_a_kl_without_its_half_trains_and_compares(checkout, tmp_path):
    repo = student_checkout(checkout, tmp_path, kl_without_half)
    code, out = cli(repo, 'run', '5b', '--profile', 'smoke', '--no-progress')
    assert code == 0 and 'Traceback' not in out, out[-3000:]
    mine, reference = values(repo, '5b'), values(repo, '5b', 'reference')
    assert mine['kl'] == pytest.approx(2 * reference['kl'], rel=0.05)  # the same networks: twice the KL
    rows, text = compare_rows(repo)
    assert rows[('5b', 'kl')] == 'measurably different', text
    assert {q for part, q in rows if part == '5b'} == {'test_elbo', 'test_elbo_mc', 'kl'}, text


def test_a_type_a_mask_that_keeps_the_centre_trains_and_compares(checkout, tmp_path):
    repo = student_checkout(checkout, tmp_path, type_a_mask_keeping_the_centre)
    code, out = cli(repo, 'run', '6a', '--profile', 'smoke', '--no-progress')
    assert code == 0 and 'Traceback' not in out, out[-3000:]
    rows, text = compare_rows(repo)
    assert list(rows) == [('6a', 'test_nll')], text


def test_the_course_only_code_reformatted_trains_and_compares(checkout, tmp_path):
    repo = student_checkout(checkout, tmp_path, reformatted)
    code, out = cli(repo, 'run', '6b', '--profile', 'smoke', '--no-progress')
    assert code == 0 and 'Traceback' not in out, out[-3000:]
    assert out.splitlines()[0].startswith('your models.py and losses.py differ from the code behind')
    rows, text = compare_rows(repo)
    assert {q for part, q in rows if part == '6b'} == {'test_elbo', 'kl', 'test_nll_is16'}, text
    mine, reference = values(repo, '6b'), values(repo, '6b', 'reference')
    assert all(abs(mine[q] - reference[q]) < 0.05 for q in reference if q != 'active_units'), mine


# ---------------------------------------------------------------------------------------------
# compile_train over several parts in one process

@pytest.mark.compiles
def test_a_later_part_in_one_process_still_trains_compiled(tmp_path, monkeypatch):
    """`all` and the notebooks train part after part in one process. TorchDynamo keeps the graphs of
    the training objective across parts, and a function that holds recompile_limit of them runs
    eagerly from then on, with only a log warning. Here the limit is 1 (8 by default: 9 smoke parts
    in a row reached it) and the compiler is the eager backend, to keep the test short: every part
    must still compile its objective (counters['frames']['ok']) and never meet the limit."""
    from torch._dynamo.utils import counters
    real = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda fn, mode=None, **kw: real(fn, backend='eager'))
    with torch._dynamo.config.patch(recompile_limit=1):  # the config's own patch: undone as it was
        for part in ('6a', '6b', '5b'):
            counters.clear()
            E.run_part(part, profile='smoke', device='cpu', results_dir=str(tmp_path), progress=False, epochs=1,
                       compile_train=True)
            limit = [k for k in counters.get('unimplemented', {}) if 'recompile limit' in k]
            assert counters['frames']['ok'] >= 1 and not limit, (part, dict(counters['frames']), limit)
