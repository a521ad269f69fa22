"""The experiment runner of CSE 599i Homework 2: the command line. Every part of the handout is a
configuration (engine/config.py) of one training loop (engine/train.py), one evaluation
(engine/evaluate.py) and one set of figures (engine/figures.py); engine/runs.py runs a part,
engine/jobs.py runs several; report.py writes the tables.

    python experiments.py all                              # every part; profile chosen by the device
    python experiments.py all --profile cpu --parts 5b,6a  # some parts, a given profile
    python experiments.py all --profile full --minutes 50  # stop cleanly after 50 minutes; rerun to resume
    python experiments.py all --profile full --jobs 3 --compile-train  # 3 parts at once, CUDA graphs
    python experiments.py run 6b [--fresh] [--epochs N]    # one part (resumes from its checkpoint)
    python experiments.py run 6c --profile full --is-images 1000  # IS NLL on a uniform sample of 1000 test images
    python experiments.py run 6a --precision bf16          # bfloat16 forward passes (fp16: float16); default auto
    python experiments.py eval 6b --quantity test_nll_is1000 --profile cpu  # recompute one number
    python experiments.py estimate --profile cpu           # measured throughput and expected time per part
    python experiments.py list [--profile cpu]             # the parts, their settings and the deviations
    python experiments.py summary                          # rewrite results/<profile>/summary.{md,json}
    python experiments.py compare                          # your runs (results/mine) beside the reference's
    python experiments.py grade SUBMISSIONS/               # the course_api checks of many students, per part
    python experiments.py notebooks                        # execute the notebooks into results/notebooks/
    python experiments.py verify                           # rerun every reproduce command, compare
    python experiments.py pack DIR --profile full [--parts 5b]  # packs of at most 8 files of 16 MiB in DIR
    python experiments.py unpack DIR                       # and back, on another machine (packs in any order)
    python experiments.py carry --profile full [--parts 6d]  # an in-progress checkpoint as pieces git can hold

    from experiments import run_part, show                 # what the notebooks do
    metrics = run_part('6b', profile='auto'); show('6b')

With a models.py or losses.py other than the code behind the committed results (a student's own),
runs asked to go to results/ go to results/mine/<profile>[-<precision>]/<part> (engine/student.py),
and no command writes into a run made by other code (engine.runs.guard_run).
"""
import argparse
import os
import sys
import time

from engine import student
from engine.config import PARTS, PRECISIONS, PROFILES, config, list_settings, part_for, pick_device, pick_profile  # noqa: F401
from engine.devices import check_device
from engine.files import read_json  # noqa: F401 (tests)
from engine.jobs import (JOB_LOG, PartsFailedError, check_parts, check_run_length, estimate_all,  # noqa: F401
                         job_command, run_parts)
from engine.jobs import run_all as run_parts_all
from engine.locks import RunLockedError
from engine.notebooks import run_notebooks
from engine.partial import EvaluationStopped
from engine.reproduce import eval_command, git_commit, redraw, verify  # noqa: F401 (tests)
from engine.runs import (ForeignCodeError, ResultsExistError, carry_parts, guard_run, pick_precision,  # noqa: F401
                         run_part, switches)
from engine.modelfiles import CheckpointError
from engine.train import NonFiniteLossError
from engine.transfer import PACK_BYTES, PACK_FILES, pack, unpack
from reporting import versus
from reporting.display import compare, show, show_finished, show_remedies  # noqa: F401 (notebooks)
from reporting.summary import write_summary
from reporting.versus import show_versus  # noqa: F401 (notebooks)


def run_all(*args, **kwargs):
    """engine.jobs.run_all, then the summary of each run directory it wrote into."""
    return run_parts_all(*args, summarise=write_summary, **kwargs)


EVAL_STOPPED = 3  # exit status of an `eval --minutes N` stopped at its time limit, with images left
PROFILE_HELP = ("full: the course's settings (a GPU: minutes to hours a part); cpu: smaller networks and fewer epochs "
                'for a laptop CPU (about an hour a part); smoke: a few steps, to check that everything runs (seconds); '
                'auto (default): full on a GPU, cpu otherwise')


def add_commands(sub):
    """The subcommands and their own options: {name: its parser}."""
    return {**add_run_commands(sub), **add_reading_commands(sub), **add_moving_commands(sub)}


def add_run_commands(sub):
    """The commands that train and evaluate: all, run, eval, estimate."""
    a = sub.add_parser('all', help='run every part (or --parts), then write the summary')
    a.add_argument('--jobs', type=int, default=1,
                   help='run N parts at once, each a process of its own on the same device, its output in '
                        '<results-dir>/<profile>/<part>/job.log; the summary follows when all have ended')
    r = sub.add_parser('run', help='run one part')
    r.add_argument('part', choices=list(PARTS))
    r.add_argument('--epochs', type=int, default=None, help="train this many epochs instead of the profile's")
    e = sub.add_parser('eval', help='recompute one number from <run dir>/<part>/model.pt; the last line is the value')
    e.add_argument('part', choices=list(PARTS))
    e.add_argument('--quantity', required=True,
                   help='test_elbo, test_elbo_mc, test_nll, test_nll_is<M>, kl, active_units')
    e.add_argument('--keep', action='store_true', help="add the per-image values to the part's per_image.pt")
    e.add_argument('--update', action='store_true', help='write the recomputed value into metrics.json')
    e.add_argument('--is-images', type=int, default=None,
                   help='importance-sample N test images (a seeded uniform sample, the same for every part; all of '
                        'them: 10000) instead of the number the run used')
    e.add_argument('--subset', choices=('uniform', 'first'), default=None,
                   help='which test images when fewer than all: by default those the recorded number covers where '
                        'it covers as many (the first N for numbers recorded before subsets), else the uniform '
                        "sample; 'uniform' moves a number recorded over the first N to the sample")
    e.add_argument('--minutes', type=float, default=None,
                   help='importance sampling only: stop cleanly after this many minutes, the images done saved '
                        'beside the model; the same command resumes there (exit status 3 while images are left)')
    es = sub.add_parser('estimate', help='measure throughput and estimate the time of each part')
    return dict(all=a, run=r, eval=e, estimate=es)


def add_reading_commands(sub):
    """The commands that read the runs or the code: summary, compare, grade, notebooks, verify, list."""
    s = sub.add_parser('summary', help='rewrite summary.md and summary.json of every run directory')
    cp = sub.add_parser('compare', help="your finished parts (results/mine) beside the reference's, paired over the "
                                        'same test images; suspects among the course_api tests where yours is worse')
    gr = sub.add_parser('grade', help='run the course_api checks on every student folder of SUBMISSIONS (each with '
                                      'models.py and/or losses.py), each in a process of its own; a verdict per '
                                      'handout part, a report per student, a table over all')
    gr.add_argument('submissions')
    gr.add_argument('--out', default=None, help='where the reports go (default: SUBMISSIONS/../grades)')
    gr.add_argument('--timeout', type=float, default=None, help='seconds one check may take (default: the grader\'s)')
    gr.add_argument('--jobs', type=int, default=2, help='students checked at once (default 2)')
    nb = sub.add_parser('notebooks', help='execute the three notebooks with the runs, into '
                                          '<results-dir>/notebooks/<profile>/ (the repository\'s notebooks stay as '
                                          'they are)')
    nb.add_argument('--in-place', action='store_true', help='save the outputs into the repository\'s notebooks '
                                                            '(the reference code only)')
    v = sub.add_parser('verify', help="run every summary.json `reproduce` command and compare with the reported value")
    v.add_argument('--parts', default=None, help='comma-separated parts (default: every part in the summaries)')
    v.add_argument('--runs', default=None, help='comma-separated run directories, e.g. cpu,cpu-bf16 (default: all)')
    v.add_argument('--quantities', default=None, help='comma-separated quantities, e.g. test_elbo,kl (default: all)')
    ls = sub.add_parser('list', help='print the parts, their settings and the deviations from the course framework')
    return dict(summary=s, compare=cp, grade=gr, notebooks=nb, verify=v, list=ls)


def add_moving_commands(sub):
    """The commands that write files of a run or move them between machines: pack, figures, unpack, carry."""
    pk = sub.add_parser('pack', help="write a profile's results into DIR as packs of at most 8 files of 16 MiB")
    pk.add_argument('dir')
    pk.add_argument('--parts', default=None, help="comma-separated parts to pack (default: the profile's whole "
                                                  'directory); what exceeds one pack goes to DIR/pack-1, pack-2, ...')
    pk.add_argument('--leave-out', default=None,
                    help='comma-separated file names not to pack, e.g. model.pt,checkpoint.pt')
    pk.add_argument('--max-files', type=int, default=PACK_FILES, help='files in one pack, its manifest included')
    pk.add_argument('--piece-mib', type=float, default=PACK_BYTES / 2 ** 20, help='MiB of one piece at most')
    pk.add_argument('--replace', action='store_true', help='remove the pack already in DIR (only its manifest.json, '
                                                           'pieces and emptied pack-* directories) before writing')
    fg = sub.add_parser('figures', help="draw a finished part's figures again from its model.pt and history.json")
    fg.add_argument('part', choices=list(PARTS))
    up = sub.add_parser('unpack', help='restore what pack wrote into DIR')
    up.add_argument('dir', nargs='+', help='one or more directories written by pack (or holding its pack-* '
                                           'directories), in any order')
    ca = sub.add_parser('carry', help="each unfinished part's checkpoint.pt as <part>/checkpoint.pack: pieces of at "
                                      'most 16 MiB that git can hold between sittings; a rerun restores it')
    ca.add_argument('--parts', default=None,
                    help='comma-separated parts (default: every unfinished part with a checkpoint)')
    ca.add_argument('--piece-mib', type=float, default=PACK_BYTES / 2 ** 20, help='MiB of one piece at most')
    return dict(pack=pk, figures=fg, unpack=up, carry=ca)


def add_shared_options(p):
    """The options several subcommands share: profile, precision, results directory, device, ..."""
    def each(names, *args, **kwargs):
        for name in names.split():
            p[name].add_argument(*args, **kwargs)
    each('all run', '--minutes', type=float, default=None,
         help='stop cleanly after this many minutes (rerun to resume); needed for an --epochs count that would train '
              'longer than a day')
    each('all run estimate', '--is-images', default=None,
         help="importance-sample a seeded uniform sample of N test images instead of the profile's (full: all "
              "10,000; cpu: 1,000); 'all': every test image")
    each('all run', '--compile-train', action=argparse.BooleanOptionalAction, default=None,
         help='train through torch.compile (mode reduce-overhead: CUDA graphs on CUDA), falling back to eager if it '
              'fails; may change between sittings of a run (default: off)')
    each('all estimate', '--parts', default=None, help='comma-separated parts (default: all of them)')
    each('all run eval estimate notebooks pack figures carry', '--profile', default='auto',
         choices=['auto', *PROFILES], help=PROFILE_HELP)
    p['list'].add_argument('--profile', default='full', choices=list(PROFILES), help=PROFILE_HELP)
    each('all run estimate', '--precision', default='auto', choices=['auto', *PRECISIONS],
         help='bf16 / fp16: training forward passes in bfloat16 / float16 with loss scaling (evaluation stays '
              'float32), results in <results-dir>/<profile>-bf16 / -fp16; auto (default): a run already started '
              'keeps its precision; fp16 on a CUDA GPU without bfloat16 tensor cores, bf16 for the parts that have '
              'shown parity, on a CPU with bfloat16 units where it measures faster, float32 otherwise')
    each('eval pack figures carry', '--precision', default='fp32', choices=PRECISIONS,
         help="the run's training precision: fp32 (results in <results-dir>/<profile>), bf16 or fp16 "
              '(<results-dir>/<profile>-bf16, -fp16)')
    each('all run', '--fresh', action='store_true', help='discard existing checkpoints and results of the part(s)')
    each('all run eval figures', '--seed', type=int, default=0,
         help='training seed (default 0, the runs the answers quote); another seed is a run of its own, in '
              '<part>-seed<k> beside the part, for the spread between training seeds')
    each('all run', '--no-progress', action='store_true', help='no progress bars')
    each('all run eval estimate summary notebooks verify pack unpack figures compare carry', '--results-dir',
         default='results')
    each('all run eval estimate figures', '--device', default=None,
         help='cuda, mps or cpu (default: the first available)')


def parser():
    """The command line's parser."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].replace('\n', ' '))
    sub = parser.add_subparsers(dest='command', required=True)
    add_shared_options(add_commands(sub))
    return parser


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if getattr(args, 'device', None) is not None:
            args.device = check_device(args.device)
        command(args)
    except (CheckpointError, NonFiniteLossError, ResultsExistError, RunLockedError, ForeignCodeError, PartsFailedError,
            ValueError, OSError) as err:
        sys.exit(f'error: {err}')


def guard_writes(args, what):
    """eval --update / --keep / --minutes and figures write into a run: only the code that made it may."""
    from engine.config import part_dir
    device = pick_device(args.device)
    out = part_dir(args.results_dir, args.part, pick_profile(args.profile, device, quiet=True), args.precision,
                   args.seed)
    guard_run(out, what)


def command(args):
    """Carry out one parsed command line."""
    if args.command == 'all':
        parts = args.parts.split(',') if args.parts is not None else None
        run_all(args.profile, parts, args.device, args.fresh, args.results_dir, not args.no_progress, args.precision,
                args.minutes, args.is_images, args.compile_train, args.jobs, seed=args.seed)
    elif args.command == 'run':
        extra = {'epochs': args.epochs} if args.epochs is not None else {}
        check_run_length(args.part, pick_profile(args.profile, pick_device(args.device), quiet=True), args.epochs,
                         args.minutes)
        run_part(args.part, args.profile, args.device, args.fresh, args.results_dir, not args.no_progress,
                 stop_at=time.time() + 60 * args.minutes if args.minutes is not None else None,
                 precision=args.precision, is_images=args.is_images, compile_train=args.compile_train, seed=args.seed,
                 **extra)
    elif args.command == 'eval':
        evaluate_command(args)
    elif args.command == 'estimate':
        device = pick_device(args.device)
        estimate_all(pick_profile(args.profile, device), args.parts.split(',') if args.parts is not None
                     else list(PARTS), device, student.results_for(args.results_dir), precision=args.precision,
                     **switches(args.is_images))
    elif args.command == 'summary':
        write_summary(student.results_for(args.results_dir, say=True))
    elif args.command == 'compare':
        from engine import reference
        for part, profile, precision in versus.missing_references(args.results_dir):
            reference.build(part, profile, precision)
        print(versus.versus_markdown(args.results_dir), end='')
    elif args.command == 'grade':
        from engine.grading import grade
        grade(args.submissions, args.out, **({} if args.timeout is None else {'timeout': args.timeout}),
              jobs=args.jobs)
    elif args.command == 'verify':
        verify_command(args)
    elif args.command == 'notebooks':
        run_notebooks(args.profile, args.results_dir, in_place=args.in_place)
    elif args.command == 'list':
        list_settings(args.profile)
    elif args.command == 'pack':
        pack(args.dir, pick_profile(args.profile, pick_device(None)), args.precision, args.results_dir,
             check_parts(args.parts.split(',')) if args.parts is not None else None, args.max_files,
             int(args.piece_mib * 2 ** 20), tuple(args.leave_out.split(',')) if args.leave_out else (),
             replace=args.replace)
    elif args.command == 'figures':
        guard_writes(args, 'figures')
        redraw(args.part, args.results_dir, args.device, args.profile, args.precision, args.seed)
    elif args.command == 'unpack':
        unpack(args.dir, args.results_dir)
    elif args.command == 'carry':
        carry_parts(pick_profile(args.profile, pick_device(None)), args.precision, args.results_dir,
                    check_parts(args.parts.split(',')) if args.parts is not None else None,
                    int(args.piece_mib * 2 ** 20))


def evaluate_command(args):
    """eval: recompute one number; with --update, --keep or --minutes only the code that made the run
    may write into it, and a pass stopped by --minutes with images left exits with EVAL_STOPPED."""
    writes = [flag for flag, on in (('--update', args.update), ('--keep', args.keep),
                                    ('--minutes', args.minutes is not None)) if on]
    if writes:
        guard_writes(args, f'eval {" ".join(writes)}')
    try:
        eval_command(args.part, args.quantity, args.results_dir, args.device, args.profile, args.precision,
                     args.keep, args.update, args.is_images, args.minutes, subset=args.subset, seed=args.seed)
    except EvaluationStopped as stop:
        print(stop, flush=True)
        sys.exit(EVAL_STOPPED)


def verify_command(args):
    """verify: with code other than the reference, the numbers are recomputed by that code, which is
    not a reproduction: they are printed and written to results/mine/verify.json, never to results/."""
    out = None
    changed = student.changed_files() if student.is_reference_dir(args.results_dir) else []
    if changed:
        out = os.path.join(student.results_for(args.results_dir), 'verify.json')
        os.makedirs(os.path.dirname(out), exist_ok=True)
        print(f'your {" and ".join(changed)} differ{"s" if len(changed) == 1 else ""} from the code that made the '
              f'committed runs: what follows recomputes their numbers with your code, which is not a reproduction; '
              f'the outcome goes to {out}', flush=True)
    checked = verify(args.results_dir, args.parts.split(',') if args.parts else None,
                     profiles=args.runs.split(',') if args.runs else None,
                     quantities=args.quantities.split(',') if args.quantities else None, out=out)
    if any(c['ok'] is False for c in checked):
        sys.exit(1)


if __name__ == '__main__':
    main()
