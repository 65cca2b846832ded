"""The ``modaloom`` command line. User mistakes print one message on stderr and exit 2."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

from modaloom.core.demo import DEMO_PRESETS
from modaloom.core.errors import ModaloomError, SpecError
from modaloom.core.plugins import default_registry
from modaloom.core.portable import provided_by
from modaloom.core.process_group import exit_launched_process, leave_process_group, prepare_to_join
from modaloom.core.spec import build_spec_class, load_spec

if TYPE_CHECKING:
    from accelerate import PartialState

EXIT_USER_ERROR = 2
Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    """Register a sub-command handler."""

    def wrap(function: Command) -> Command:
        COMMANDS[name] = function
        return function

    return wrap


def default_output(spec_arg: str) -> Path:
    """``runs/<spec file stem or preset name>``, so ``--resume`` finds the same run."""
    return Path("runs") / Path(spec_arg).stem


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from modaloom.core.runner import train

    keep = [f"train.keep_last={args.keep_last}"] if args.keep_last is not None else []
    output = Path(args.output) if args.output else default_output(args.spec)
    provided = provided_by(output) if args.resume else frozenset()  # what the run kept
    spec = load_spec(args.spec, [*args.set, *keep], provided=provided)
    result = train(
        spec,
        output,
        resume=args.resume,
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
    )
    if not result.is_main_process:
        return 0
    print(
        f"trained {result.step} steps; last loss {result.last_loss:.4f}; "
        f"checkpoint {result.checkpoint}"
    )
    return 0


def start_processes() -> PartialState:
    """Join the process group a launcher (torchrun, ``accelerate launch``) set up, if any.

    Returns:
        Accelerate's state: this process's device (its GPU, else the CPU with gloo) and rank.
    """
    import torch
    from accelerate import PartialState

    prepare_to_join()
    return PartialState(cpu=not torch.cuda.is_available())


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    from modaloom.core.evaluation import format_table, run_evaluators, write_metrics
    from modaloom.core.inference import load_run

    registry = default_registry()
    spec = load_spec(args.spec, args.set, registry, provided=provided_by(args.checkpoint))
    if not spec.eval:
        raise ModaloomError(f"{args.spec} has no `eval:` section; add an evaluator")
    state = start_processes()
    run = load_run(args.checkpoint, spec=spec, registry=registry, device=state.device)
    metrics = run_evaluators(spec, run.model, run.processors, run.sources, registry, run.device)
    if not state.is_main_process:  # every rank holds the same gathered metrics
        return 0
    output = Path(args.output) if args.output else run.checkpoint / "metrics.json"
    write_metrics(output, metrics)
    print(format_table(metrics))
    print(f"wrote {output}")
    return 0


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    from modaloom.core.export import export_component, export_model

    if args.component is None:
        written = export_model(args.run, args.output)
    else:
        written = export_component(args.run, args.component, args.output)
    print(f"wrote {args.output}: {', '.join(written)}")
    return 0


@command("data")
def cmd_data(args: argparse.Namespace) -> int:
    from modaloom.core.data_commands import inspect_url, pack_manifest

    if args.data_command == "pack":
        packed = pack_manifest(Path(args.manifest), Path(args.output), args.shard_size)
        print(f"wrote {len(packed.shards)} shard(s) to {args.output}")
        print(f"read them with fields: {json.dumps(packed.fields)}")
        return 0
    if args.data_command == "convert":
        return convert_command(args)
    for sample in inspect_url(args.url, limit=args.limit):
        print(json.dumps(sample, default=str))
    return 0


def convert_command(args: argparse.Namespace) -> int:
    """``modaloom data convert``: manifests per split, a summary line each."""
    from modaloom.core.convert import REPORT, convert_dataset

    report = convert_dataset(
        args.format,
        [Path(source) for source in args.sources],
        Path(args.output),
        Path(args.media_root) if args.media_root else None,
        keep_missing=args.keep_missing,
        shards=args.shards,
        shard_size=args.shard_size,
    )
    for split, manifest in report.manifests.items():
        missing = f", {report.missing[split]} without media" if report.missing[split] else ""
        packed = f", {len(report.shards[split])} shard(s)" if split in report.shards else ""
        print(f"{split}: {report.items[split]} items{missing}{packed} -> {manifest}")
    for fields in {json.dumps(f): f for f in report.shard_fields.values()}:
        print(f"read the shards with fields: {fields}")
    print(f"wrote {Path(args.output) / REPORT}")
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from modaloom.core.demo import run_demo

    if args.finetune or args.pretrained_run:
        return finetune_demo(args)
    run_demo(args.preset, args.output or "demo-output", args.set, not args.no_progress)
    return 0


def finetune_demo(args: argparse.Namespace) -> int:
    """``modaloom demo --finetune [--from RUN]``: scratch vs pretrained fine-tuning."""
    from modaloom.core.demo_finetune import PRETRAIN_PRESET, run_finetune_demo

    if not args.finetune:
        raise ModaloomError("--from RUN is the pretraining run of --finetune; add --finetune")
    if args.preset != PRETRAIN_PRESET:
        raise ModaloomError(f"--finetune fine-tunes {PRETRAIN_PRESET}; leave --preset out")
    output = args.output or "demo-finetune"
    run_finetune_demo(output, args.pretrained_run, not args.no_progress, overrides=args.set)
    return 0


@command("validate")
def cmd_validate(args: argparse.Namespace) -> int:
    from modaloom.core.build_check import check_build
    from modaloom.core.init_from import check_init_from
    from modaloom.core.stage_data import check_stage_data

    registry = default_registry()
    spec = load_spec(args.spec, args.set, registry)
    try:
        check_stage_data(spec)
        check_init_from(spec)
        check = check_build(spec, registry)
    except SpecError as exc:  # name the spec, as load_spec's errors do
        raise SpecError(exc.problems, source=args.spec) from None
    stages = spec.train.resolved_stages()
    print(
        f"{args.spec}: valid ({len(spec.model.components)} components, "
        f"{len(spec.model.objectives)} objectives, {len(spec.data.sources)} sources, "
        f"{sum(s.steps for s in stages)} steps in {len(stages)} stage(s))"
    )
    if check.built:
        print("the model builds (checked on the meta device)")
    else:
        print(f"not built: {', '.join(check.skipped)} load checkpoints when training starts")
    return 0


@command("plugins")
def cmd_plugins(args: argparse.Namespace) -> int:
    rows = [
        {"kind": c.kind, "name": c.name, "plugin": c.plugin, "description": c.description}
        for c in default_registry()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    widths = [max(len(str(r[k])) for r in rows) for k in ("kind", "name", "plugin")]
    for row in rows:
        cells = [
            str(row[k]).ljust(w) for k, w in zip(("kind", "name", "plugin"), widths, strict=True)
        ]
        print("  ".join([*cells, row["description"]]).rstrip())
    return 0


@command("presets")
def cmd_presets(args: argparse.Namespace) -> int:
    for component in default_registry().of_kind("preset"):
        print(f"{component.name:<16} {component.description}  [{component.plugin}]")
    return 0


@command("schema")
def cmd_schema(args: argparse.Namespace) -> int:
    schema = json.dumps(build_spec_class(default_registry()).model_json_schema(), indent=2)
    if not args.output:
        print(schema)
        return 0
    try:
        Path(args.output).write_text(schema + "\n")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        fix = "; create the folder first" if not Path(args.output).parent.is_dir() else ""
        raise ModaloomError(f"cannot write {args.output}: {reason}{fix}") from None
    return 0


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="a YAML spec file or a preset name (see `modaloom presets`)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set train.steps=100 (repeatable)",
    )


def installed_version() -> str:
    """The installed distribution's version (``pyproject.toml``)."""
    try:
        return importlib.metadata.version("modaloom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="modaloom", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"modaloom {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train a spec or preset")
    add_spec_arguments(train)
    train.add_argument("--output", help="run directory (default: runs/<spec name>)")
    start = train.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest intact checkpoint in --output (from scratch if none)",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="move a run already in --output aside to OUTPUT.old-<time> and start afresh",
    )
    train.add_argument(
        "--keep-last",
        type=int,
        metavar="N",
        help="keep only the newest N checkpoints (same as --set train.keep_last=N)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate = sub.add_parser("eval", help="evaluate a checkpoint with the spec's evaluators")
    add_spec_arguments(evaluate)
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        help="a run directory (newest checkpoint) or a step-N directory",
    )
    evaluate.add_argument("--output", help="metrics file (default: CHECKPOINT/metrics.json)")
    export = sub.add_parser(
        "export", help="write a run's component in its Hugging Face layout, or the whole model"
    )
    export.add_argument("run", help="a run directory (newest checkpoint) or a step-N directory")
    export.add_argument(
        "--component",
        help="one component (e.g. vision), for its transformers class's from_pretrained; "
        "omit to export the whole model for modaloom.load",
    )
    export.add_argument("--output", required=True, help="a new or empty directory")
    data = sub.add_parser("data", help="convert datasets, pack and inspect webdataset shards")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pack = data_sub.add_parser("pack", help="write a JSONL manifest into tar shards")
    pack.add_argument("manifest", help="JSONL manifest with media paths relative to it")
    pack.add_argument("--output", required=True, help="directory for shard-000000.tar, ...")
    pack.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    convert = data_sub.add_parser(
        "convert", help="write JSONL manifests per split from a public dataset's annotations"
    )
    convert.add_argument(
        "format",
        help="coco-karpathy, flickr30k-karpathy, msrvtt, webvid, "
        "audiocaps, vqav2, valor (modaloom plugins lists every converter)",
    )
    convert.add_argument("sources", nargs="+", metavar="SRC", help="the annotation file(s)")
    convert.add_argument("--output", required=True, help="directory for <split>.jsonl")
    convert.add_argument(
        "--media-root", help="where the media files are (default: the first SRC's directory)"
    )
    convert.add_argument(
        "--keep-missing", action="store_true", help="keep lines whose media file is missing"
    )
    convert.add_argument(
        "--shards", action="store_true", help="also pack each split into OUTPUT/shards/<split>/"
    )
    convert.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    inspect = data_sub.add_parser("inspect", help="print the first samples of shards")
    inspect.add_argument("url", help="a shard URL or brace pattern (any fsspec protocol)")
    inspect.add_argument("--limit", type=int, default=3, help="samples to print")
    demo = sub.add_parser("demo", help="train and evaluate a tiny preset on the digits-av set")
    demo.add_argument("--preset", default="valor-tiny", choices=DEMO_PRESETS)
    demo.add_argument(
        "--output", help="directory for metrics and report (demo-output; --finetune: demo-finetune)"
    )
    demo.add_argument(
        "--finetune",
        action="store_true",
        help="fine-tune a valor-tiny pretraining run and the same model from scratch, compare",
    )
    demo.add_argument(
        "--from",
        dest="pretrained_run",
        metavar="RUN",
        help="with --finetune: an existing valor-tiny run directory instead of pretraining one",
    )
    demo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset value, e.g. --set train.steps=200 (--finetune: the fine-tuning's)",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    validate = sub.add_parser("validate", help="check a spec without running it")
    add_spec_arguments(validate)
    plugins = sub.add_parser("plugins", help="list registered components and their plugins")
    plugins.add_argument("--json", action="store_true", help="print JSON objects")
    sub.add_parser("presets", help="list named specs")
    schema = sub.add_parser("schema", help="print the JSON Schema of specs")
    schema.add_argument("--output", help="write to a file instead of stdout")
    return parser


def user_message(exc: BaseException) -> str:
    """The error's own message; a DataLoader worker wraps it in a traceback, which is dropped."""
    message = str(exc)
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modaloom`` script.

    A rank started by a launcher leaves through `exit_launched_process` once its command has
    returned (see `modaloom.core.process_group`); an unexpected exception still propagates.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = run_command(args)
    finally:
        launched = leave_process_group()
    if launched:
        exit_launched_process(code)
    return code


def run_command(args: argparse.Namespace) -> int:
    """Run the sub-command; a user mistake prints one line and gives `EXIT_USER_ERROR`."""
    try:
        return COMMANDS[args.command](args)
    except (ModaloomError, pluggy.PluginValidationError) as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
