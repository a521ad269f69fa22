"""Which test images an evaluation covers (issue 47): all of them, or a seeded uniform sample without
replacement, the same images in the same order for every part, nested across sizes, never a prefix;
metrics.json states which (values.<quantity>.subset), per_image.pt holds their indices, and `eval`
recomputes a number over the images it covers (the first n for a number recorded before subsets)."""
import pytest
import torch

from engine import config as C
from engine import evaluate as V
from engine import reproduce as R
from engine import train as T
from engine.files import read_json, write_json
import experiments as E

torch.set_num_threads(2)

UNIFORM = f'uniform:{V.SUBSET_SEED}'


# ---------------------------------------------------------------------------------------------
# The sample

def test_all_test_images_are_no_subset():
    assert V.test_subset(10000, None) is None and V.test_subset(10000, 10000) is None
    assert V.test_subset(10, 12) is None


@pytest.mark.parametrize('n', [0, -3, 2.5, '10', True])
def test_a_subset_has_a_positive_whole_number_of_images(n):
    with pytest.raises(ValueError, match='positive whole number'):
        V.test_subset(10000, n)


def test_a_sample_is_drawn_without_replacement_seeded_and_nested():
    a = V.test_subset(10000, 2000)
    assert a.dtype == torch.long and a.shape == (2000,)
    assert len(set(a.tolist())) == 2000 and 0 <= a.min() and a.max() < 10000  # without replacement
    torch.manual_seed(12345)  # torch's global generator plays no part
    assert torch.equal(V.test_subset(10000, 2000), a)
    assert torch.equal(V.test_subset(10000, 1000), a[:1000])  # nested: 1000 pairs with the first 1000 of 2000
    assert torch.equal(V.test_subset(10000, 9999), V.test_subset(10000, 9999, seed=V.SUBSET_SEED))
    assert sorted(V.test_subset(10000, 9999).tolist()) != list(range(9999))  # not a prefix in another order
    assert not torch.equal(V.test_subset(10000, 2000, seed=V.SUBSET_SEED + 1), a)
    # pinned: the committed numbers over a sample depend on which images it holds
    assert V.test_subset(10000, 5).tolist() == [2056, 9772, 822, 926, 6071]


def test_a_sample_is_spread_uniformly_over_the_test_set():
    """Each tenth of the test set holds about a tenth of a sample of 2000 (200, standard deviation
    about 13 for a uniform sample), and so do the first 200 draws of it."""
    a = V.test_subset(10000, 2000)
    assert (torch.bincount(a // 1000, minlength=10) - 200).abs().max() < 50
    assert (torch.bincount(a[:200] // 1000, minlength=10) - 20).abs().max() < 16
    assert abs(a.double().mean().item() - 4999.5) < 300


def test_subset_of_a_value_and_its_images():
    assert V.subset_of(dict(value=1.0, stderr=0.1, n_images=10000)) == 'all'
    assert V.subset_of(dict(value=1.0, stderr=0.1, n_images=1000)) == 'first:1000'  # recorded before subsets
    assert V.subset_of(dict(value=1.0, stderr=0.1, n_images=1000, subset=UNIFORM)) == UNIFORM
    assert V.subset_of(dict(value=1.0, stderr=None, n_images=6), n_test=6) == 'all'
    assert torch.equal(V.subset_images('all', 10000), torch.arange(10000))
    assert torch.equal(V.subset_images('first:1000', 1000), torch.arange(1000))
    assert torch.equal(V.subset_images(UNIFORM, 1000), V.test_subset(10000, 1000))
    assert torch.equal(V.subset_images('uniform:3', 7, n_test=50), V.test_subset(50, 7, seed=3))
    with pytest.raises(ValueError, match='unknown subset'):
        V.subset_images('last:10', 10)
    assert V.subset_words('all') == 'the whole test set' and V.subset_words('first:1000') == 'the first 1000'
    assert V.subset_words(UNIFORM) == f'a uniform sample, seed {V.SUBSET_SEED}'


# ---------------------------------------------------------------------------------------------
# evaluate(): the numbers over x[index], each stating its subset

def setup(part='6d', **overrides):
    settings = {**dict(test_images=6, is_images=3, is_samples=4, is_batch=2, is_chunk=2, au_samples=2), **overrides}
    cfg = C.config(part, 'smoke', **settings)
    torch.manual_seed(0)
    nets = T.build(C.model_spec(cfg), 'cpu')
    for net in nets.values():
        net.eval()
    return cfg, nets


TEST_X = torch.bernoulli(torch.full((40, 1, 28, 28), 0.3), generator=torch.Generator().manual_seed(3))


@pytest.fixture
def is_inputs(monkeypatch):
    """The test images each importance-sampling pass is given."""
    seen = []
    sample = V.importance_sampled_nll

    def spy(encoder, decoder, x, *args, **kwargs):
        seen.append(x.clone())
        return sample(encoder, decoder, x, *args, **kwargs)
    monkeypatch.setattr(V, 'importance_sampled_nll', spy)
    return seen


def test_evaluate_over_a_sample_uses_those_images_and_says_so(is_inputs):
    cfg, nets = setup()
    keep = {}
    out = V.evaluate(nets, cfg, TEST_X, progress=False, keep=keep)
    index, is_index = V.test_subset(40, 6), V.test_subset(40, 3)
    assert torch.equal(is_index, index[:3])  # the NLL's images are among the ELBO's
    assert {k: v['subset'] for k, v in out.items()} == {k: UNIFORM for k in out}
    assert len(is_inputs) == 1 and torch.equal(is_inputs[0], TEST_X[is_index])
    nll = V.importance_sampled_nll(nets['encoder'], nets['decoder'], TEST_X[is_index], 4, 2, 2,
                                   generator=torch.Generator().manual_seed(cfg['seed'] + 202))
    assert torch.equal(keep['test_nll_is4'], nll)
    assert out['test_nll_is4'] == dict(V.mean_stderr(nll), M=4, subset=UNIFORM)
    elbo = V.neg_elbo(nets, cfg, TEST_X[index], cfg['seed'] + 101)
    assert {k: dict(v, subset=UNIFORM) for k, v in elbo.items()} == {k: out[k] for k in elbo}
    assert out['active_units'] == dict(V.active_units(nets['encoder'], TEST_X[index], 2, cfg['seed'] + 303),
                                       subset=UNIFORM)
    # per-image values with the indices of their test images beside them
    assert set(keep) == {'test_elbo', 'test_recon', 'kl', 'test_nll_is4', 'test_elbo_index', 'test_recon_index',
                         'kl_index', 'test_nll_is4_index'}
    assert torch.equal(keep['kl_index'], index) and torch.equal(keep['test_nll_is4_index'], is_index)


def test_evaluate_over_all_images_takes_them_in_test_set_order(is_inputs):
    cfg, nets = setup(test_images=None, is_images=None)
    keep = {}
    out = V.evaluate(nets, cfg, TEST_X[:8], progress=False, keep=keep)
    assert {v['subset'] for v in out.values()} == {'all'} and {v['n_images'] for v in out.values()} == {8}
    assert torch.equal(is_inputs[0], TEST_X[:8])
    assert not [k for k in keep if k.endswith('_index')]
    assert V.evaluate(nets, dict(cfg, test_images=8, is_images=20), TEST_X[:8], progress=False) == out


def test_evaluate_over_the_first_images_as_runs_did_before_subsets(is_inputs):
    cfg, nets = setup()
    keep = {}
    out = V.evaluate(nets, cfg, TEST_X, progress=False, keep=keep, first=True)
    assert torch.equal(is_inputs[0], TEST_X[:3])
    assert out['test_nll_is4']['subset'] == 'first:3' and out['kl']['subset'] == 'first:6'
    assert torch.equal(keep['test_nll_is4_index'], torch.arange(3))
    assert out['kl'] == dict(V.neg_elbo(nets, cfg, TEST_X[:6], cfg['seed'] + 101)['kl'], subset='first:6')


def test_every_part_is_evaluated_on_the_same_images_whatever_its_seed():
    indices = []
    for part, seed in (('6b', 0), ('6d', 0), ('6c', 5)):
        cfg, nets = setup(part, seed=seed)
        keep = {}
        V.evaluate(nets, cfg, TEST_X, progress=False, keep=keep)
        indices.append((keep['kl_index'], keep[f'{C.is_quantity(cfg)}_index']))
    for kl, nll in indices[1:]:
        assert torch.equal(kl, indices[0][0]) and torch.equal(nll, indices[0][1])


# ---------------------------------------------------------------------------------------------
# `eval`: the same images as the number it recomputes

@pytest.fixture(scope='module')
def smoke_6b(tmp_path_factory):
    """A finished smoke 6b: test ELBO over 100 test images, importance-sampled NLL over 10."""
    results = tmp_path_factory.mktemp('subsets')
    E.run_part('6b', profile='smoke', results_dir=str(results), progress=False, epochs=1)
    out = results / 'smoke' / '6b'
    return results, out, (out / 'metrics.json').read_bytes(), (out / 'per_image.pt').read_bytes()


@pytest.fixture
def run_6b(smoke_6b):
    results, out, metrics, kept = smoke_6b
    (out / 'metrics.json').write_bytes(metrics)
    (out / 'per_image.pt').write_bytes(kept)
    ask = dict(part='6b', quantity='test_nll_is16', results_dir=str(results), device='cpu', profile='smoke')
    return out, ask


def test_a_run_records_its_subsets_and_eval_reproduces_its_numbers(run_6b):
    out, ask = run_6b
    m = read_json(out / 'metrics.json')
    assert {k: v['subset'] for k, v in m['values'].items()} == {k: UNIFORM for k in m['values']}
    kept = torch.load(out / 'per_image.pt', weights_only=True)
    assert torch.equal(kept['test_nll_is16_index'].long(), V.test_subset(10000, 10))
    assert torch.equal(kept['kl_index'].long(), V.test_subset(10000, 100))
    for quantity in ('test_nll_is16', 'kl'):
        assert R.eval_command(**dict(ask, quantity=quantity)) == m['values'][quantity]['value']


def test_eval_over_more_images_pairs_with_the_run_and_reproduces(run_6b, capsys):
    """12 images: the run's 10 first, in the same order, with the same per-image values (the same
    draws in each batch of 5), and the number recorded with its subset reproduces."""
    out, ask = run_6b
    before = torch.load(out / 'per_image.pt', weights_only=True)
    value = R.eval_command(**ask, is_images=12, keep=True, update=True)
    assert f'over 12 test images (a uniform sample, seed {V.SUBSET_SEED})' in capsys.readouterr().out
    m = read_json(out / 'metrics.json')
    assert m['values']['test_nll_is16']['subset'] == UNIFORM and m['values']['test_nll_is16']['n_images'] == 12
    kept = torch.load(out / 'per_image.pt', weights_only=True)
    assert torch.equal(kept['test_nll_is16_index'], V.test_subset(10000, 12))
    assert kept['test_nll_is16_index'].dtype == torch.long
    assert torch.equal(kept['test_nll_is16'][:10], before['test_nll_is16'])
    assert R.eval_command(**ask, is_images=12) == value


def test_eval_recomputes_a_number_recorded_before_subsets_over_the_first_images(run_6b):
    """A value without 'subset' over fewer than all images covered the first n: `eval` reproduces
    it over those, `--update` only adds its subset, and subset='uniform' moves it to the sample."""
    out, ask = run_6b
    m = read_json(out / 'metrics.json')
    uniform = m['values']['test_nll_is16']
    _, _, cfg, nets, _ = R.load_model_file('6b', ask['results_dir'], 'cpu', 'smoke', 'fp32')
    v = V.evaluate(nets, cfg, T.load_data(cfg, train=False), only='test_nll_is16', progress=False,
                   first=True)['test_nll_is16']
    assert v['subset'] == 'first:10' and v['value'] != uniform['value']
    m['values']['test_nll_is16'] = old = {k: x for k, x in v.items() if k != 'subset'}  # as recorded before subsets
    write_json(out / 'metrics.json', m)
    assert R.eval_command(**ask, keep=True, update=True) == old['value']
    after = read_json(out / 'metrics.json')
    assert after['values']['test_nll_is16'] == dict(old, subset='first:10')
    assert 'test_nll_is16' not in (after.get('recomputed') or {})
    assert torch.equal(torch.load(out / 'per_image.pt', weights_only=True)['test_nll_is16_index'], torch.arange(10))
    # moved to the uniform sample on request; the number over the first images stays on record
    assert R.eval_command(**ask, subset='uniform', update=True) == uniform['value']
    moved = read_json(out / 'metrics.json')
    assert moved['values']['test_nll_is16'] == uniform
    assert moved['recomputed']['test_nll_is16']['previous'] == dict(old, subset='first:10')
    assert R.eval_command(**ask) == uniform['value']  # and it reproduces there


def test_eval_refuses_an_unknown_subset(run_6b):
    _, ask = run_6b
    with pytest.raises(ValueError, match='subset must be one of uniform, first'):
        R.eval_command(**ask, subset='prefix')


# ---------------------------------------------------------------------------------------------
# Pairing per-image values by test image, whatever images each covers

def test_per_image_values_pair_by_the_test_images_they_cover():
    """A uniform sample of 12 (indices saved beside it), one of 8 recorded in metrics.json only, the
    first 3000 (recorded before subsets) and the whole set: paired over the images all four cover,
    in the order of the first, element by element the same image."""
    image_value = torch.arange(10000, dtype=torch.float64) * 0.5  # a per-image value that names its image
    kept = {'a': image_value[V.test_subset(10000, 12)], V.index_key('a'): V.test_subset(10000, 12),
            'b': image_value[V.test_subset(10000, 8)], 'c': image_value[:3000], 'd': image_value}
    values = dict(b=dict(value=0.0, stderr=0.0, n_images=8, subset=UNIFORM),
                  c=dict(value=0.0, stderr=0.0, n_images=3000), d=dict(value=0.0, stderr=0.0, n_images=10000))
    index = {q: V.kept_index(kept, q, values.get(q)) for q in 'abcd'}
    assert torch.equal(index['a'], V.test_subset(10000, 12)) and torch.equal(index['b'], V.test_subset(10000, 8))
    assert torch.equal(index['c'], torch.arange(3000)) and torch.equal(index['d'], torch.arange(10000))
    assert torch.equal(V.kept_index({'e': torch.zeros(5)}, 'e'), torch.arange(5))
    paired = V.pair_by_image([(kept[q], index[q]) for q in 'abcd'])
    expected = [i for i in V.test_subset(10000, 8).tolist() if i < 3000]
    assert len(expected) > 0
    for p in paired:
        assert torch.equal(p, image_value[expected])
