"""Which test images an evaluation covers: all of them, in test-set order, or a seeded uniform sample
without replacement (test_subset), the same for every part and nested across sizes, never a prefix.
Each value of metrics.json names its images ('subset': 'all', 'uniform:<seed>', or 'first:<n>' for a
number recorded before subsets), and per-image values over a sample keep the indices of their images
beside them (index_key), so that values of different parts pair image by image (pair_by_image).
Index tensors live on the CPU: they index the test set, which an evaluation moves where it runs.
"""
import functools
import hashlib

import torch

MNIST_TEST = 10000  # images in MNIST's test set
SUBSET_SEED = 599   # the seed of the uniform sample of test images that every part is evaluated on


@functools.lru_cache(maxsize=4)
def test_permutation(n_total, seed):
    """range(n_total) in a seeded uniformly random order: the indices sorted by sha256 of
    '<seed>:<index>', so the order is the same on every platform and every version of torch and
    Python (the numbers it selects are to be recomputed from committed model files for years)."""
    order = sorted(range(n_total), key=lambda i: hashlib.sha256(f'{seed}:{i}'.encode()).digest())
    return torch.tensor(order, dtype=torch.long)  # cpu: indices into the test set


def test_subset(n_total, n, seed=SUBSET_SEED):
    """The test images an evaluation over n of n_total covers: None for all of them, in test-set
    order (n None, or at least n_total); otherwise a uniform sample without replacement, an (n,)
    int64 tensor of indices into the test set in the order drawn. It is the first n of one seeded
    permutation (test_permutation), so the same n gives the same images in the same order for every
    part and model (paired comparisons pair), and samples are nested: the sample of n is the first n
    of the sample of any larger number."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f'a subset of the test images has a positive whole number of images, got {n!r}')
    return None if n >= n_total else test_permutation(n_total, seed)[:n].clone()


test_permutation.__test__ = test_subset.__test__ = False  # not tests, for pytest, where a test module imports them


def images_for(n_total, n, first=False):
    """(index, subset) of an evaluation over n of n_total test images: index as test_subset's (None:
    all), subset its name as metrics.json records it: 'all', 'uniform:<seed>', or with first=True
    'first:<n>' and index arange(n), the images a run recorded before subsets evaluated on."""
    index = test_subset(n_total, n)
    if index is None:
        return None, 'all'
    if first:
        return torch.arange(n), f'first:{n}'  # cpu: indices into the test set
    return index, f'uniform:{SUBSET_SEED}'


def subset_of(value, n_test=MNIST_TEST):
    """Which test images a value of metrics.json covers: its 'subset' ('all' or 'uniform:<seed>');
    for a value recorded before subsets (no 'subset'), 'all' if it covers the whole test set and
    'first:<n>' otherwise, the first n_images test images."""
    if value.get('subset') is not None:
        return value['subset']
    return 'all' if value['n_images'] >= n_test else f'first:{value["n_images"]}'


def subset_images(subset, n_images, n_test=MNIST_TEST):
    """The indices into the test set, in order, of the n_images images a subset names (subset_of's
    names): all n_test, the first n_images, or the uniform sample of n_images with the seed named."""
    kind, _, arg = subset.partition(':')
    if kind == 'all':
        return torch.arange(n_test)  # cpu: indices into the test set
    if kind == 'first':
        return torch.arange(n_images)  # cpu: indices into the test set
    if kind == 'uniform':
        index = test_subset(n_test, n_images, seed=int(arg))
        return torch.arange(n_test) if index is None else index  # cpu: indices into the test set
    raise ValueError(f'unknown subset of the test images {subset!r}; subsets are all, first:<n> and uniform:<seed>')


def index_key(quantity):
    """The key in per_image.pt (and in evaluate's keep) of the test-image indices of a quantity's
    per-image values; absent where they cover every test image in test-set order."""
    return f'{quantity}_index'


def kept_index(kept, quantity, value=None, n_test=MNIST_TEST):
    """The test-image indices of the per-image values kept[quantity] (per_image.pt, or evaluate's keep):
    those saved beside them (index_key); without them, those of the subset of the quantity's value
    in metrics.json (value), or with no value the first len(kept[quantity]) test images."""
    if index_key(quantity) in kept:
        return kept[index_key(quantity)].long()
    n = len(kept[quantity])
    return torch.arange(n) if value is None else subset_images(subset_of(value, n_test), n, n_test)  # cpu: indices


def pair_by_image(series):
    """Per-image values of several quantities, [(values, index)] with index the test images of each
    (kept_index), each restricted to the test images all of them cover, in the order of the first:
    [values], so that element i of each is the same image, for paired comparisons."""
    common = set.intersection(*(set(index.tolist()) for _, index in series))
    order = [i for i in series[0][1].tolist() if i in common]
    paired = []
    for values, index in series:
        position = {image: p for p, image in enumerate(index.tolist())}
        paired.append(values[torch.tensor([position[i] for i in order], dtype=torch.long)])  # cpu: indices
    return paired


def subset_words(subset):
    """A subset in words, for messages: 'the whole test set', 'the first 1000', 'a uniform sample, seed 599'."""
    kind, _, arg = subset.partition(':')
    return {'all': 'the whole test set', 'first': f'the first {arg}'}.get(kind, f'a uniform sample, seed {arg}')


def with_index(values, index):
    """Per-image values {quantity: (n,)} with, where they cover a subset of the test images (index not
    None), the indices of those images beside each: {quantity: (n,), <quantity>_index: (n,) int64}."""
    if index is None:
        return dict(values)
    return {**values, **{index_key(k): index.clone() for k in values}}
