"""The `ftlab` command.

    ftlab doctor                                  what works offline on this machine
    ftlab setup                                   fetch/check data and weights (make does this)
    ftlab pretrain resnet18-fashion-mnist         build ftlab's pretrained ResNet-18 (cached)
    ftlab finetune --data digits --n-train 500 --lr 1e-3 --epochs 5 --png curves.png
    ftlab grade submissions/ --lesson 2 --jobs 2  grade a class with otter (docs/grading.md)
    ftlab grade submissions/ --lesson 2 --shard 2/3 --out out-2   one of 3 machines' share
    ftlab grade merge out-1 out-2 out-3 --out grading-results      join the shards
    ftlab grade canvas grading-results --roster export.csv --assignment "Lesson 02 (123)"
    ftlab course build --repo https://github.com/you/ftlab-course ../ftlab-course   the course to publish
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, never a traceback
        self.exit(2, f"ftlab: error: {message} (see ftlab {self.prog.split()[-1]} --help)\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _shard(text: str):
    from .grade.shards import Shard

    try:
        return Shard.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ftlab", description="Teach fine-tuning: pretrained ResNet and BERT, offline.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("doctor", help="show Python, torch, the device, and which data/weights work offline")
    setup = commands.add_parser("setup", help="check or fetch the offline data and weights (idempotent)")
    setup.add_argument("--browser", action="store_true", help="also Debian's chromium, for the browser test")
    pre = commands.add_parser("pretrain", help="build ftlab's pretrained ResNet-18 on Fashion-MNIST")
    from .pretrain import RECIPES

    pre.add_argument("name", choices=sorted(RECIPES))
    pre.add_argument("--force", action="store_true", help="rebuild even when a valid checkpoint is cached")

    ft = commands.add_parser("finetune", help="fine-tune a pretrained model headlessly (the demo)")
    ft.add_argument("--model", choices=["resnet18", "bert"], default="resnet18")
    ft.add_argument("--weights", default=None,
                    help="resnet18: fashion-mnist (default), imagenet or none; bert: a model name/folder")
    ft.add_argument("--data", choices=["digits", "fashion-mnist", "bbc-news"], default="digits")
    ft.add_argument("--n-train", type=_positive_int, default=500)
    ft.add_argument("--classes", default=None, help="comma-separated class names to keep")
    ft.add_argument("--lr", type=_positive_float, default=1e-3)
    ft.add_argument("--head-lr", type=_positive_float, default=None)
    ft.add_argument("--epochs", type=_positive_int, default=5)
    ft.add_argument("--frozen-depth", type=int, default=0)
    ft.add_argument("--patience", type=_positive_int, default=None)
    ft.add_argument("--lr-decay", type=_positive_float, default=None,
                    help="layer-wise learning rates: each block down from the top gets this times the one above")
    ft.add_argument("--warmup", type=float, default=0.0, help="fraction of the steps spent warming up (e.g. 0.1)")
    ft.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    ft.add_argument("--augment", choices=["light"], default=None, help="images: augment training batches")
    ft.add_argument("--batch-size", type=_positive_int, default=32)
    ft.add_argument("--max-length", type=_positive_int, default=128)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--device", default="auto")
    ft.add_argument("--png", default="ftlab-curves.png", help="where to write the learning curves")
    ft.add_argument("--quiet", action="store_true", help="no progress bar")

    gr = commands.add_parser("grade", help="grade submitted notebooks with an otter autograder, each in a sandbox",
                             epilog="ftlab grade merge SHARD_OUT... --out DIR joins --shard runs; ftlab grade canvas "
                                    "OUT --roster CSV --assignment NAME writes a Canvas gradebook CSV (see their "
                                    "--help). To grade a folder named merge or canvas, write ./merge")
    gr.add_argument("submissions", nargs="+", help="notebooks, folders of them, or zips of a class")
    which = gr.add_mutually_exclusive_group(required=True)
    which.add_argument("--autograder", help="the autograder zip written by `otter assign` (- : read it from stdin)")
    which.add_argument("--lesson", type=int, help="use build/autograder/<NN>_*-autograder_*.zip (make assign)")
    gr.add_argument("--autograders", default="build/autograder", help="where --lesson looks (default %(default)s)")
    gr.add_argument("--out", default="grading-results", help="results folder (default %(default)s)")
    gr.add_argument("--jobs", type=_positive_int, default=1, help="submissions graded at once")
    gr.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds per submission")
    gr.add_argument("--memory-mb", type=_positive_int, default=4096, help="memory per submission")
    gr.add_argument("--isolation", choices=["auto", "namespaces", "process"], default="auto",
                    help="auto: the strongest this machine allows; namespaces: that or fail")
    again = gr.add_mutually_exclusive_group()
    again.add_argument("--regrade", action="store_true", help="grade again even what an earlier run graded")
    again.add_argument("--resume", action="store_true", help="keep earlier results for unchanged files (default)")
    gr.add_argument("--allow-read", action="append", metavar="PATH", help="a path the notebooks may read")
    gr.add_argument("--save-notebooks", action="store_true", help="keep each executed notebook in OUT/notebooks")
    gr.add_argument("--shard", type=_shard, metavar="K/N", default=None,
                    help="grade only share K of N (by learner; 1 <= K <= N): one of N machines; "
                         "`ftlab grade merge` joins their OUT folders")
    gr.add_argument("--quiet", action="store_true", help="no progress bar")

    course = commands.add_parser("course", help="the publishable course: student notebooks with the course's address")
    course_routes = course.add_subparsers(dest="course_command", required=True, parser_class=_Parser)
    build = course_routes.add_parser("build", help="write the course learners clone and open on Colab into OUT",
                                     description="Write the student notebooks, the library, the data cards and a "
                                                 "README into OUT, with the Colab badges and FTLAB_GIT_URL pointing "
                                                 "at --repo; never notebooks/source or build/ (checked).")
    build.add_argument("out", metavar="OUT", help="an empty folder, or one an earlier build made (its .git is kept)")
    build.add_argument("--repo", required=True, metavar="URL", help="https://github.com/OWNER/NAME (or OWNER/NAME)")
    build.add_argument("--branch", default="main", help="the branch the badges open (default %(default)s)")
    return parser


class _RouteParser(_Parser):
    def error(self, message: str):
        self.exit(2, f"ftlab: error: {message} (see {self.prog} --help)\n")


def _grade_route_parser() -> argparse.ArgumentParser:
    """`ftlab grade merge` and `ftlab grade canvas`: what `grade` does with results, not submissions."""
    parser = _RouteParser(prog="ftlab grade")
    routes = parser.add_subparsers(dest="route", required=True, parser_class=_RouteParser)
    merge = routes.add_parser("merge", help="join the OUT folders of `ftlab grade --shard K/N` runs",
                              description="Join the OUT folders of every shard K/N of one batch into the results "
                                          "folder, grades.csv and junit.xml one batch writes. Refuses shards of "
                                          "other autograders or classes, overlapping learners, missing shards.")
    merge.add_argument("shards", nargs="+", metavar="SHARD_OUT", help="the shards' OUT folders (all N of them)")
    merge.add_argument("--out", "-o", required=True, metavar="DIR", help="the merged results folder")
    canvas = routes.add_parser("canvas", help="a Canvas gradebook import CSV from a results folder",
                               description="Write a Canvas gradebook import CSV (Student, ID, SIS User ID, SIS "
                                           "Login ID, Section, then the assignment) from OUT's results, one row "
                                           "per roster student (Canvas's own gradebook export is a roster).")
    canvas.add_argument("out", metavar="OUT", help="a folder written by `ftlab grade` or `ftlab grade merge`")
    canvas.add_argument("--roster", required=True, metavar="CSV", help="students: Canvas's gradebook export")
    canvas.add_argument("--assignment", required=True, metavar="NAME",
                        help="the column: 'Lesson 02 (12345)' as Canvas's export names it, or a new name")
    canvas.add_argument("--match", default="SIS Login ID", metavar="COLUMN",
                        help="the roster column holding the learner's name as graded (default %(default)s)")
    canvas.add_argument("--csv", dest="path", default=None, metavar="FILE",
                        help="where to write (default OUT/canvas.csv)")
    return parser


def _grade_route(args) -> int:
    if args.route == "merge":
        from .grade.shards import MergeRefused, format_merge_report, merge_shards

        try:
            report = merge_shards(args.shards, out=args.out)
        except (MergeRefused, OSError) as error:
            print(f"ftlab grade merge: cannot merge: {error}", file=sys.stderr)
            return 1
        print(format_merge_report(report))
        return 0
    from .grade.lms import canvas_gradebook, format_canvas_report

    try:
        report = canvas_gradebook(args.out, roster=args.roster, assignment=args.assignment, match=args.match,
                                  path=args.path)
    except (ValueError, OSError) as error:
        print(f"ftlab grade canvas: error: {error}", file=sys.stderr)
        return 1
    print(format_canvas_report(report))
    return 0


def _finetune(args) -> int:
    import ftlab

    task = ftlab.datasets.load(args.data, n_train=args.n_train, seed=args.seed,
                               classes=args.classes.split(",") if args.classes else None)
    if args.model == "resnet18":
        if task.modality != "image":
            raise ValueError(f"--model resnet18 needs image data; {args.data} is text (use --model bert)")
        weights = {"none": None, None: "fashion-mnist"}.get(args.weights, args.weights)
        model = ftlab.models.resnet18(weights=weights)
    else:
        if task.modality != "text":
            raise ValueError(f"--model bert needs text data; {args.data} is images (use --model resnet18)")
        model = ftlab.models.bert(args.weights or "all-MiniLM-L6-v2", num_classes=task.num_classes,
                                  max_length=args.max_length)
    ftlab.models.replace_head(model, task.num_classes)
    print(f"ftlab: fine-tuning {args.model} ({model.weights_name} weights) on {task}, frozen depth "
          f"{args.frozen_depth} of {len(ftlab.blocks(model))}", flush=True)
    history = ftlab.fit(model, task, lr=args.lr, head_lr=args.head_lr, epochs=args.epochs,
                        frozen_depth=args.frozen_depth, patience=args.patience, batch_size=args.batch_size,
                        lr_decay=args.lr_decay, warmup=args.warmup, schedule=args.schedule, augment=args.augment,
                        seed=args.seed, device=args.device, progress=not args.quiet)
    test = ftlab.evaluate(model, task.test, device=args.device)
    frame = history.to_frame()
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"best epoch {history.best_epoch}; test accuracy {test['accuracy']:.1%} on {test['n']} examples; "
          f"{history.summary_line()}")
    if history.message:
        print(history.message)
    from .plots import plot_history

    plot_history(history).savefig(args.png, dpi=120)
    print(f"learning curves written to {args.png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["grade"] and argv[1:2] in (["merge"], ["canvas"]):  # routes that take results, not notebooks
        return _grade_route(_grade_route_parser().parse_args(argv[1:]))
    args = _parser().parse_args(argv)
    try:
        if args.command == "doctor":
            from .doctor import format_report

            print(format_report())
        elif args.command == "setup":
            from .install import ensure_all

            ensure_all(browser=args.browser)
        elif args.command == "pretrain":
            from .pretrain import cache_status, checkpoint_path, pretrain, read_card

            if cache_status(args.name) == "ok" and not args.force:
                card = read_card(args.name)
                print(f"{args.name} is already cached in {checkpoint_path(args.name)} (test accuracy "
                      f"{card['test_accuracy']:.1%}); --force rebuilds it")
            else:
                pretrain(args.name)
        elif args.command == "finetune":
            return _finetune(args)
        elif args.command == "grade":
            from .grade.batch import grade_from_cli

            return grade_from_cli(args)
        elif args.command == "course":
            from .course import build

            try:
                made = build(args.repo, args.out, branch=args.branch)
            except (ValueError, RuntimeError) as error:
                print(f"ftlab course build: error: {error}", file=sys.stderr)
                return 1
            lessons = sum(1 for path in made.files if path.parts[0] == "notebooks" and path.suffix == ".ipynb")
            print(f"ftlab course build: {len(made.files)} files, {lessons} notebooks for {made.repo} in {made.out}; "
                  f"FTLAB_GIT_URL = {made.git_url}. Publish: cd {made.out} && git init -b {args.branch} && "
                  f"git add -A && git commit -m course && git push {made.git_url} {args.branch}")
    except KeyboardInterrupt:
        print("ftlab: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, OSError) as error:
        print(f"ftlab {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
