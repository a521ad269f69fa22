"""What tools/queue.sh asks of the engine. Every value comes in as an argument and is checked
before use; none is ever pasted into Python code.

    python tools/queue_info.py check --code DIR --profile full --queue "6b 6d" --recompute "6b 6c" \\
        --is-images 10000 --minutes 60     # exit status 2 and one line on stderr if any value is wrong
    python tools/queue_info.py quantity --code DIR 6b full     # test_nll_is1000
    python tools/queue_info.py covered METRICS_JSON test_nll_is1000   # test images the number covers

--code is the directory whose engine the queue runs (its worktree), so that the parts and profiles
are those of the code that trains them; the script itself may come from another checkout.
"""
import argparse
import json
import math
import os
import sys

TEST_IMAGES = 10000  # MNIST's test set: the most images importance sampling can cover


class Invalid(ValueError):
    """A value the queue was given that it cannot run with."""


def engine_config(code):
    """engine.config of the code in directory `code`."""
    sys.path.insert(0, os.path.abspath(code))
    from engine import config
    return config


def parts_of(name, text, known):
    """The whitespace-separated parts in `text`, each one of `known`."""
    parts = text.split()
    for part in parts:
        if part not in known:
            raise Invalid(f'{name}: unknown part {part!r}; the parts are {", ".join(known)}')
    return parts


def count(name, text, low, high):
    """An integer in [low, high] written in decimal digits."""
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise Invalid(f'{name}={text!r}: expected a whole number from {low} to {high}')
    return int(text)


def minutes(name, text):
    """A positive, finite number of minutes."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0) or text.strip() != text:
        raise Invalid(f'{name}={text!r}: expected a positive number of minutes')
    return value


def check(cfg, profile, queue, recompute, is_images, minutes_text):
    """Every value of the queue, against the parts and profiles of engine.config `cfg`."""
    if profile not in cfg.PROFILES:
        raise Invalid(f'PROFILE={profile!r}: unknown profile; the profiles are {", ".join(cfg.PROFILES)}')
    parts_of('QUEUE', queue, list(cfg.PARTS))
    for part in parts_of('RECOMPUTE', recompute, list(cfg.PARTS)):
        settings = cfg.config(part, profile)
        if cfg.is_quantity(settings) not in cfg.quantities(settings):
            raise Invalid(f'RECOMPUTE: {part} has no importance-sampled NLL to recompute (its model is '
                          f'{settings["model"]})')
    count('IS_IMAGES', is_images, 1, TEST_IMAGES)
    minutes('MINUTES', minutes_text)


def covered(metrics, quantity):
    """The test images `quantity` covers in the metrics file, or 0 where it has no such number."""
    if not os.path.isfile(metrics):
        raise Invalid(f'{metrics} does not exist: the part has not finished, so there is nothing to recompute')
    try:
        with open(metrics) as fh:
            value = json.load(fh).get('values', {}).get(quantity) or {}
    except (OSError, ValueError, AttributeError) as err:
        raise Invalid(f'{metrics} is unreadable ({type(err).__name__}: {err})') from err
    return value.get('n_images') or 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='command', required=True)
    c = sub.add_parser('check')
    c.add_argument('--code', default='.')
    c.add_argument('--profile', required=True)
    c.add_argument('--queue', default='')
    c.add_argument('--recompute', default='')
    c.add_argument('--is-images', required=True)
    c.add_argument('--minutes', required=True)
    q = sub.add_parser('quantity')
    q.add_argument('--code', default='.')
    q.add_argument('part')
    q.add_argument('profile')
    v = sub.add_parser('covered')
    v.add_argument('metrics')
    v.add_argument('quantity')
    args = ap.parse_args(argv)
    try:
        if args.command == 'check':
            check(engine_config(args.code), args.profile, args.queue, args.recompute, args.is_images, args.minutes)
        elif args.command == 'quantity':
            cfg = engine_config(args.code)
            check(cfg, args.profile, '', args.part, '1', '1')
            print(cfg.is_quantity(cfg.config(args.part, args.profile)))
        else:
            print(covered(args.metrics, args.quantity))
    except Invalid as err:
        print(f'queue: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
