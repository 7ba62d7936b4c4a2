"""The `timematters` command line: demo, train, eval, diagnose, data check, backbones."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from timematters.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="timematters",
        description="TIME: temporal self-supervision for video transformers (ICML 2022).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train baseline and +TIME on the built-in temporal benchmark and compare"
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (about 30 s on 2 CPU cores; too short to learn)",
    )
    demo.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds")
    demo.add_argument("--out", default=None, help="run folder (runs/demo or runs/demo_image)")
    demo.add_argument(
        "--image", action="store_true", help="the image extension instead (Table 4, backgrounds)"
    )
    demo.add_argument("--ablation", action="store_true", help="all 8 loss combinations of Table 3")
    demo.add_argument("--epochs", type=int, default=None, help="override the epoch budget")

    train = commands.add_parser("train", help="train from a YAML config")
    train.add_argument("config", help="a YAML file or a packaged preset (synthetic/time, ...)")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    train.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue a run from a checkpoint (default: <train.out>/checkpoints/last.pth)",
    )
    train.add_argument("--init-from", default=None, help="start from these weights only")

    evaluate = commands.add_parser("eval", help="original / shuffled / gap of a checkpoint")
    evaluate.add_argument("config")
    evaluate.add_argument("overrides", nargs="*")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--out", default=None, help="folder for eval.json / eval.md")

    diagnose = commands.add_parser(
        "diagnose",
        help="does a model use time? shuffle test, confidence gap, order probe, GradCAM",
    )
    diagnose.add_argument("--config", required=True, help="the data and model config")
    diagnose.add_argument("overrides", nargs="*")
    diagnose.add_argument("--checkpoint", action="append", required=True, help="repeat to compare")
    diagnose.add_argument("--name", action="append", help="a display name per checkpoint")
    diagnose.add_argument("--out", default="runs/diagnose")
    diagnose.add_argument("--no-probe", action="store_true", help="skip the order probe")
    diagnose.add_argument("--probe-clips", type=int, default=128, help="clips to fit / to score")
    diagnose.add_argument("--gradcam-clips", type=int, default=4)
    diagnose.add_argument("--gradcam-index", type=int, action="append", help="clip indices")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser("check", help="validate a dataset; non-zero exit on problems")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*")
    check.add_argument("--no-decode", action="store_true", help="check files exist, skip decoding")
    check.add_argument("--limit", type=int, default=0, help="check at most N videos per split")

    commands.add_parser("backbones", help="list the registered backbones")

    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"timematters: error: {error}", file=sys.stderr)
        return 2


def _demo(args) -> int:
    if args.image:
        from timematters.image_demo import run_image_demo

        run_image_demo(Path(args.out or "runs/demo_image"), quick=args.quick, seeds=args.seeds)
        return 0
    from timematters.demo import run_demo

    run_demo(
        out=Path(args.out or "runs/demo"),
        quick=args.quick,
        seeds=args.seeds,
        ablation=args.ablation,
        epochs=args.epochs,
    )
    return 0


def _train(args) -> int:
    from timematters.engine.train import train

    cfg = load_config(args.config, args.overrides)
    resume = args.resume
    if resume == "auto":
        resume = Path(cfg.train.out) / "checkpoints" / "last.pth"
    result = train(cfg, resume=resume, init_from=args.init_from)
    if result["metrics"] is not None:
        from timematters.engine.evaluate import format_table

        print(format_table({cfg.model.name: result["metrics"]}))
        print(f"run folder: {result['run_dir']}")
    return 0


def _eval(args) -> int:
    from timematters.engine.model import evaluate_checkpoint

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent.parent
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_checkpoint(cfg, args.checkpoint)
    metrics = result.metrics()
    table = result.table(Path(args.checkpoint).name)
    (out / "eval.json").write_text(json.dumps(metrics, indent=2))
    (out / "eval.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    return 0


def _diagnose(args) -> int:
    from timematters.diagnostics.report import run_diagnose

    out = Path(args.out)
    run_diagnose(
        load_config(args.config, args.overrides),
        [Path(c) for c in args.checkpoint],
        out,
        names=args.name,
        probe=not args.no_probe,
        probe_fit_clips=args.probe_clips,
        probe_held_out_clips=args.probe_clips,
        gradcam_clips=args.gradcam_clips,
        gradcam_indices=args.gradcam_index,
    )
    print(f"report: {out / 'report.md'}")
    return 0


def _data(args) -> int:
    from timematters.data.check import check_dataset

    cfg = load_config(args.config, args.overrides)
    return check_dataset(cfg, decode=not args.no_decode, limit=args.limit)


def _backbones(args) -> int:
    from timematters.backbones import list_backbones

    print("\n".join(list_backbones()))
    return 0


_COMMANDS = {
    "demo": _demo,
    "train": _train,
    "eval": _eval,
    "diagnose": _diagnose,
    "data": _data,
    "backbones": _backbones,
}

if __name__ == "__main__":
    sys.exit(main())
