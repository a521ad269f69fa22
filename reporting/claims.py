"""The sentences of the results chapter whose truth depends on the numbers, each checked against
the runs. analysis/results.tex marks such a sentence with \\pinned{key}; CLAIMS[key] says in words
what the sentence asserts and checks it, and tests/test_claims.py runs every check, so that a run
that changes the numbers fails the suite instead of leaving a false sentence behind.

    python -m reporting.claims [RESULTS_DIR]     # each claim: holds or FAILS, with its numbers

A difference is measurable when it is at least two standard errors from zero (answers.measurable);
each standard error is over test images, one training seed per run.
"""
import sys
from collections import namedtuple

from engine.config import config, with_defaults
from reporting.answers import contrast, measurable, subset_of
from reporting.numbers import GOALS, Runs, equal_epochs, gap_difference, log_attempts
from reporting.reader import per_image, seen
from reporting import seeds
from reporting.seeds import seed_judgements

Claim = namedtuple('Claim', 'key sentence check')
CLAIMS = {}


def claim(key, sentence):
    """Register check(runs) -> (holds, the numbers it read) as the claim `key` of the chapter."""
    def register(check):
        CLAIMS[key] = Claim(key, sentence, check)
        return check
    return register


def said(c):
    return f'{c["value"]:+.2f} ± {c["se"]:.2f} ({"paired" if c["paired"] else "unpaired"}, {c["images"]})'


def below(c, by=0.0):
    """c is measurably below -by: its value plus two standard errors is under -by."""
    return c['value'] + 2 * c['se'] < -by


def bound_above_nll(r, part):
    """Whether a part's −ELBO lies measurably above its NLL over the same images, and the gap in words."""
    g = r.gap(part)
    return measurable(g) and g['value'] > 0, f'−ELBO − NLL: {said(g)}'


def kl_after_switch(r, part):
    """(test KL term at the switch to autoregression, final KL term, active units, the three in words)
    of a part that switches its PixelCNN on."""
    at = r.epochs_kl(part)[with_defaults(r[part]['config'])['autoregress_epoch'] - 1]
    kl, au = r.value(part, 'kl')['value'], r.value(part, 'active_units')['value']
    return at, kl, au, f'KL at the switch {at:.2f}, final {kl:.2f}, {au} units active'


def still_falling(r, part, floor=None):
    """Whether a part's test KL term was still falling over the last six epochs (slope below zero by
    two standard errors, and above floor, nats per epoch, if given), and the slope in words."""
    b, se = r.trend(part)
    return b + 2 * se < 0 and (floor is None or b > floor), f'slope {b:+.3f} ± {se:.3f} nats per epoch'


def settings_apart(a, b):
    """The settings in which two runs differ, beside the test images they were evaluated on."""
    ca, cb = (with_defaults(m['config']) for m in (a, b))
    return sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k) and k not in ('is_images', 'test_images'))


@claim('five-cpu-only', '5b and 5c exist only at the cpu profile')
def _(r):
    profiles = {m['profile'] for p in ('5b', '5c') for m in r.view.pool.get(p, [])}
    return profiles == {'cpu'}, f'profiles with 5b or 5c: {sorted(profiles)}'


@claim('first-images-easier', 'the first 1,000 test images are easier than the rest (6a\'s exact NLL is lower on them)')
def _(r):
    s = per_image(r['6a'])['test_nll'].double()
    a, b = s[:1000], s[1000:]
    d = dict(value=(a.mean() - b.mean()).item(), se=(a.var() / len(a) + b.var() / len(b)).sqrt().item())
    return below(d), f'first 1,000 − the other {len(b):,}: {d["value"]:+.2f} ± {d["se"]:.2f} (unpaired)'


@claim('one-seed', 'each configuration trained once, from one seed, so no comparison has a seed spread')
def _(r):
    used = {with_defaults(m['config'])['seed'] for ms in r.view.pool.values() for m in ms}
    more = {f'{name} ({spread["profile"]})': spread['seeds'] for name, (_, spread, _) in seed_judgements(r).items()
            if spread and len(spread['seeds']) > 1}
    return len(used) == 1 and not more, f'the seeds of the runs: {sorted(used)}; comparisons with seeds: {more}'


@claim('cpu-profile-other-sign', 'some comparison takes the other sign at the cpu profile than in the quoted '
                                 'course-settings runs, each measurably')
def _(r):
    other = []
    for name, (quoted, spread, _) in seed_judgements(r).items():
        if spread and spread['profile'] == 'cpu' and spread['values'] and measurable(quoted):
            against = 1.0 if seeds.COMPARISONS[name].q == 'kl ratio' else 0.0
            at_cpu = spread['values'][0]
            if (quoted['value'] - against) * (at_cpu - against) < 0 and measurable(
                    dict(value=at_cpu - against, se=spread['ses'][0])):
                other.append(f'{name}: {quoted["value"]:+.2f} quoted, {at_cpu:+.2f} at the cpu profile')
    return bool(other), '; '.join(other) or 'every comparison keeps its sign at the cpu profile'


@claim('five-b-samples-not-digits', '5b\'s samples are strokes and squiggles, not digits, and its reconstructions '
                                    'the test digits; 5c\'s samples are alike (as seen in the figures, reader.SEEN)')
def _(r):
    import os
    said_of = {(p, k): seen(os.path.join(r[p]['dir'], f'{k}.png')) for p in ('5b', '5c')
               for k in ('samples', 'reconstructions')}
    ok = all('not digits' in (said_of[(p, 'samples')] or '')
             and 'test digits' in (said_of[(p, 'reconstructions')] or '') for p in ('5b', '5c'))
    return ok, '; '.join(f'{p} {k}: {v}' for (p, k), v in said_of.items())


@claim('five-c-below-five-b', '5c\'s test −ELBO is measurably lower than 5b\'s')
def _(r):
    d = r.diff('5c', '5b', 'test_elbo')
    return below(d), f'5c − 5b: {said(d)}'


@claim('five-b-estimators-agree', 'on 5b\'s test images the Monte-Carlo KL and the closed form show no measurable '
                                  'difference')
def _(r):
    d = contrast([(1, r['5b'], 'kl_mc'), (-1, r['5b'], 'kl')])
    return not measurable(d), f'KL_mc − KL: {said(d)}'


@claim('six-a-above-published', '6a\'s NLL lies measurably above the published PixelCNN\'s 81.30')
def _(r):
    v = r.value('6a', 'nll')
    return v['value'] - 2 * v['stderr'] > 81.30, f'6a: {v["value"]:.2f} ± {v["stderr"]:.2f}'


@claim('bf16-not-worse', 'at the cpu profile bfloat16 training was measurably better than float32 for 6a (slightly '
                         'better, not worse)')
def _(r):
    d = contrast([(1, r.cpu_bf16['6a'], 'test_nll'), (-1, r.cpu['6a'], 'test_nll')])
    return below(d) and abs(d['value']) < 0.5, f'bf16 − float32: {said(d)}'


@claim('six-b-goal', '6b\'s NLL over all test images lies more than two standard errors above the goal of at most '
                     '86 nats: the goal is missed')
def _(r):
    v = r.value('6b', 'nll')
    return subset_of(v) == 'all' and v['value'] - GOALS['SixBNLL'] > 2 * v['stderr'], \
        f'6b: {v["value"]:.2f} ± {v["stderr"]:.2f} ({subset_of(v)}), goal {GOALS["SixBNLL"]:g}'


@claim('six-b-bound-above-nll', '6b\'s −ELBO lies measurably above its NLL over the same images')
def _(r):
    return bound_above_nll(r, '6b')


@claim('six-c-bound-above-nll', '6c\'s −ELBO lies measurably above its NLL over the same images')
def _(r):
    return bound_above_nll(r, '6c')


@claim('six-c-collapse-partial', '6c\'s KL term falls after the PixelCNN is switched on, to under half its level at '
                                 'the switch, but not to zero: some latent dimensions stay active')
def _(r):
    at, kl, au, said = kl_after_switch(r, '6c')
    return kl < at / 2 and kl >= 1 and au > 0, said


@claim('six-c-kl-still-falling', '6c\'s KL term was still falling over the last six epochs (slope below zero by two '
                                 'standard errors)')
def _(r):
    return still_falling(r, '6c')


@claim('six-c-above-six-a', '6c\'s NLL is measurably above 6a\'s over the same images, and the two runs differ in '
                            'epochs and precision')
def _(r):
    d = r.diff('6c', '6a', 'nll')
    c, a = (with_defaults(r[p]['config']) for p in ('6c', '6a'))
    apart = r['6c']['epochs'] != r['6a']['epochs'] and c['precision'] != a['precision']
    return measurable(d) and d['value'] > 0 and apart, f'6c − 6a: {said(d)}; epochs {r["6c"]["epochs"]} and ' \
                                                       f'{r["6a"]["epochs"]}, {c["precision"]} and {a["precision"]}'


@claim('six-c-above-six-a-at-equal-epochs', '6c\'s NLL over all test images lies measurably above 6a\'s after as '
                                             'many epochs (unpaired), and the two trained in other precisions')
def _(r):
    e = equal_epochs(r)
    if e is None:
        return False, '6c\'s NLL does not cover all test images yet, or 6a\'s history is shorter'
    c, a = (with_defaults(r[p]['config']) for p in ('6c', '6a'))
    return below(dict(e, value=-e['value'])) and c['precision'] != a['precision'], \
        f'6c − 6a after {e["epochs"]} epochs: {said(e)}; {c["precision"]} and {a["precision"]}'


@claim('six-d-gain', 'the goal holds: 6d\'s NLL is at least 1 nat below 6b\'s, paired (by two standard errors)')
def _(r):
    d = r.diff('6d', '6b', 'nll')
    return d['paired'] and below(d, GOALS['SixDGain']), f'6d − 6b: {said(d)}'


@claim('six-d-tighter', 'with the flow the bound is tighter: 6b\'s −ELBO lies measurably further above its NLL than '
                        '6d\'s')
def _(r):
    d = gap_difference(r, '6b', '6d')
    return measurable(d) and d['value'] > 0, f'6b\'s gap − 6d\'s: {said(d)}'


@claim('six-d-differs-in-flow-and-compile', '6d and 6b differ in the flow and in compile_train, which 6d turned on '
                                            'after its first epochs (run.log)')
def _(r):
    apart = settings_apart(r['6d'], r['6b'])
    last = (log_attempts(r['6d']) or [[]])[-1]
    off = [e for e, _, on in last if not on]
    return apart == ['compile_train', 'flows'] and 0 < len(off) < len(last), \
        f'settings apart: {apart}; epochs with compile_train off: {off}'


@claim('six-d-stall-comes-with-the-flow', '6d\'s code was unused for its first epochs, 6b\'s never; the stall began '
                                          'with compile_train off and an earlier attempt with it off stalled too; '
                                          'every IAF run without free bits stalled, free bits did not')
def _(r):
    attempts = log_attempts(r['6d'])
    last, earlier = attempts[-1], attempts[0] if len(attempts) > 1 else []
    began_off = bool(last) and not last[0][2] and last[0][1] < 1
    earlier_off_stalled = bool(earlier) and earlier[0][1] < 1 and not any(on for _, _, on in earlier)
    stalls = {p: r.stall(p) for p in ('6b', '6d', '6e-baseline', '6e-warmup', '6e-weak', '6e-freebits')}
    ok = (stalls['6b'] == 0 == stalls['6e-freebits'] and all(stalls[p] > 0 for p in ('6d', '6e-baseline', '6e-warmup',
                                                                                      '6e-weak')))
    return ok and began_off and earlier_off_stalled, f'stalls {stalls}; began with compile_train off: {began_off}; ' \
                                                     f'earlier attempt off and stalled: {earlier_off_stalled}'


@claim('six-e-baseline-collapses-partly', 'without a remedy the KL term falls after the switch, to under half its '
                                          'level there, but some dimensions stay active')
def _(r):
    at, kl, au, said = kl_after_switch(r, '6e-baseline')
    return kl < at / 2 and au > 0, said


@claim('six-e-freebits-meets-the-goal', 'free bits keeps a KL term at least twice the baseline\'s, with every latent '
                                        'dimension active, and an NLL no more than 0.5 nats above it (by two '
                                        'standard errors); "prevents most of it": at least 80% of its KL at the switch')
def _(r):
    ratio, d = r.ratio('6e-freebits', '6e-baseline'), r.diff('6e-freebits', '6e-baseline', 'nll')
    at = r.epochs_kl('6e-freebits')[with_defaults(r['6e-freebits']['config'])['autoregress_epoch'] - 1]
    kl, au = r.value('6e-freebits', 'kl')['value'], r.value('6e-freebits', 'active_units')['value']
    ok = ratio['value'] - 2 * ratio['se'] >= GOALS['KLRatio'] and d['value'] + 2 * d['se'] <= GOALS['NLLSlack']
    return ok and au == 49 and kl >= 0.8 * at, f'KL ratio {ratio["value"]:.2f} ± {ratio["se"]:.3f}; NLL − ' \
                                               f'baseline\'s {said(d)}; {au} units; KL {kl:.2f} of {at:.2f}'


@claim('six-e-others-miss-the-goal', 'warm-up and the weak PixelCNN keep less than twice the baseline\'s KL term, '
                                     'at a measurable cost in NLL')
def _(r):
    out, ok = [], True
    for p in ('6e-warmup', '6e-weak'):
        ratio, d = r.ratio(p, '6e-baseline'), r.diff(p, '6e-baseline', 'nll')
        ok &= ratio['value'] + 2 * ratio['se'] < GOALS['KLRatio'] and measurable(d) and d['value'] > 0
        out.append(f'{p}: ratio {ratio["value"]:.2f}, NLL {said(d)}')
    return ok, '; '.join(out)


@claim('six-e-one-setting-each', 'each remedy differs from the baseline in its own settings only')
def _(r):
    own = {'6e-warmup': ['kl_warmup', 'kl_warmup_start'], '6e-freebits': ['free_bits'], '6e-weak': ['pixelcnn_depth']}
    apart = {p: settings_apart(r[p], r['6e-baseline']) for p in own}
    return apart == own, f'settings apart from the baseline: {apart}'


@claim('free-bits-floor', 'the free-bits floor, λ per dimension over 49 dimensions, is over twice the baseline\'s '
                          'final KL term')
def _(r):
    floor = config('6e-freebits', 'full')['free_bits'] * 49
    kl = r.value('6e-baseline', 'kl')['value']
    return floor > GOALS['KLRatio'] * kl, f'floor {floor:.1f}, baseline KL {kl:.2f}'


@claim('warm-up-starts-at-the-switch', 'the warm-up starts at the epoch the PixelCNN is switched on, and the '
                                       'baseline\'s code is in use by then (KL of 1 nat or more)')
def _(r):
    cfg = with_defaults(r['6e-warmup']['config'])
    at = r.epochs_kl('6e-baseline')[cfg['autoregress_epoch'] - 1]
    return cfg['kl_warmup_start'] == cfg['autoregress_epoch'] and at >= 1, \
        f'warm-up from epoch {cfg["kl_warmup_start"]}, switch after epoch {cfg["autoregress_epoch"]}, ' \
        f'baseline KL {at:.2f}'


@claim('warm-up-still-falling', 'the warm-up run\'s KL term was still falling over the last six epochs')
def _(r):
    return still_falling(r, '6e-warmup')


@claim('free-bits-bound-looser', 'free bits\' −ELBO is measurably above the baseline\'s while its NLL is measurably '
                                 'below, its bound measurably looser')
def _(r):
    e, n = r.diff('6e-freebits', '6e-baseline', 'test_elbo'), r.diff('6e-freebits', '6e-baseline', 'nll')
    g = gap_difference(r, '6e-freebits', '6e-baseline')
    ok = measurable(e) and e['value'] > 0 and below(n) and measurable(g) and g['value'] > 0
    return ok, f'−ELBO {said(e)}; NLL {said(n)}; gap {said(g)}'


@claim('six-e-baseline-still-falling', 'the baseline\'s KL term was still falling slowly over the last six epochs')
def _(r):
    return still_falling(r, '6e-baseline', floor=-0.5)


@claim('flow-helps-the-pixelvae', 'the baseline\'s NLL is measurably below 6c\'s, which differs from it in the flow '
                                  'alone')
def _(r):
    d = r.diff('6e-baseline', '6c', 'nll')
    apart = settings_apart(r['6e-baseline'], r['6c'])
    return below(d) and apart == ['flows'], f'6e-baseline − 6c: {said(d)}; settings apart: {apart}'


def check(results_dir='results'):
    """[(claim, holds, the numbers it read)] of every claim against the runs in results_dir."""
    r = Runs(results_dir)
    out = []
    for c in CLAIMS.values():
        try:
            holds, detail = c.check(r)
        except (KeyError, IndexError, TypeError) as err:  # a part or a value missing: the sentence has no support
            holds, detail = False, f'cannot be checked: {type(err).__name__} {err}'
        out.append((c, bool(holds), detail))
    return out


def main(argv=None):
    results_dir = (argv or sys.argv[1:] or ['results'])[0]
    found = check(results_dir)
    for c, holds, detail in found:
        print(f'{"holds" if holds else "FAILS"}  {c.key}: {c.sentence}\n       {detail}')
    return 0 if all(h for _, h, _ in found) else 1


if __name__ == '__main__':
    sys.exit(main())
