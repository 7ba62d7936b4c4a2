"""The `timematters` command line: demo, train, eval, diagnose, predict, flow, export, table, configs, data
check / frames, backbones.

A user mistake (a bad key or value, a missing file, a run folder in use, a checkpoint that does not
fit) exits with status 2 and one line naming it; a run stopped by bad data exits with 1; a run
stopped by SIGINT / SIGTERM exits with 130 / 143 after writing its checkpoint. Set
``TIMEMATTERS_TRACEBACK=1`` to see the traceback behind a message.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from timematters.config import PERTURBATION_NAMES, ConfigError, load_config, validate_device
from timematters.data.text import counted

PERTURB_HELP = (
    "temporal perturbations, comma-separated (default: shuffle, the paper's): "
    + ", ".join(PERTURBATION_NAMES)
)
MODEL_SPECS = (
    "a timematters checkpoint, hf:DIR_OR_HUB_ID, torchvision:NAME[:WEIGHTS], pkg.module:factory"
)


def _comma_list(text: str) -> list[str]:
    """``"shuffle, reverse,"`` -> ``["shuffle", "reverse"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timematters",
        description="TIME: temporal self-supervision for video transformers (ICML 2022).",
    )
    parser.add_argument("--version", action="version", version=f"timematters {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="train baseline and +TIME on the built-in temporal benchmark and compare"
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (about 30 s on 2 CPU cores; too short to learn)",
    )
    demo.add_argument("--seeds", type=_positive, default=1, help="repeat with this many seeds")
    demo.add_argument(
        "--out",
        default=None,
        help="run folder (runs/demo, runs/demo_quick, runs/demo_image or runs/demo_image_quick)",
    )
    demo.add_argument(
        "--image", action="store_true", help="the image extension instead (Table 4, backgrounds)"
    )
    demo.add_argument("--ablation", action="store_true", help="all 8 loss combinations of Table 3")
    demo.add_argument("--epochs", type=_positive, default=None, help="override the epoch budget")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    demo.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped demo in --out (the same options), from its runs' checkpoints",
    )
    demo.add_argument("--perturb", default="shuffle", help=PERTURB_HELP)
    demo.add_argument(
        "--appendix-d",
        action="store_true",
        help="Appendix D: baseline vs re-added time embeddings vs re-added + order loss",
    )

    train = commands.add_parser("train", help="train from a YAML config or a packaged preset")
    train.add_argument("config", help="a YAML file or a packaged preset (synthetic/time, ...)")
    train.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    train.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="auto|CHECKPOINT",
        help="continue the run exactly from <train.out>/checkpoints/last.pth (or the checkpoint "
        "given); 'auto': continue it if it exists, else start fresh (preemptible jobs)",
    )
    train.add_argument("--init-from", default=None, help="start a new run from these weights")
    train.add_argument(
        "--overwrite", action="store_true", help="replace a run already in train.out"
    )

    evaluate = commands.add_parser("eval", help="original / shuffled / gap of a model")
    evaluate.add_argument("config", help="the data config (a YAML file or a preset)")
    evaluate.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    model = evaluate.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a timematters checkpoint")
    model.add_argument("--model", help=f"a model spec: {MODEL_SPECS}")
    evaluate.add_argument(
        "--out",
        default=None,
        help="folder for eval.json / eval.md (default: <checkpoint>_eval/, <hf folder>_eval/, or "
        "runs/eval/<model>)",
    )
    evaluate.add_argument("--perturb", default=None, help=PERTURB_HELP)

    diagnose = commands.add_parser(
        "diagnose",
        help="does a model use time? shuffle test, confidence gap, order probe, GradCAM",
    )
    diagnose.add_argument("--config", required=True, help="the data config (clips, classes)")
    diagnose.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    diagnose.add_argument(
        "--model",
        action="append",
        dest="models",
        help=f"a model spec; repeat to compare: {MODEL_SPECS}",
    )
    diagnose.add_argument(
        "--checkpoint", action="append", dest="models", help="a timematters checkpoint (= --model)"
    )
    diagnose.add_argument("--name", action="append", help="a display name per model, in order")
    diagnose.add_argument("--perturb", default=None, help=PERTURB_HELP)
    diagnose.add_argument("--out", default="runs/diagnose", help="the report's folder")
    diagnose.add_argument("--no-probe", action="store_true", help="skip the order probe")
    diagnose.add_argument(
        "--probe-clips", type=_positive, default=128, help="clips to fit / to score"
    )
    diagnose.add_argument(
        "--gradcam-clips", type=_non_negative, default=4, help="clips to explain (0: none)"
    )
    diagnose.add_argument("--gradcam-index", type=int, action="append", help="clip indices")

    flow = commands.add_parser(
        "flow", help="draw the flow labels a config makes for some clips or videos"
    )
    flow.add_argument("config", help="a YAML file or a packaged preset")
    flow.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    flow.add_argument(
        "--video",
        action="append",
        dest="videos",
        default=[],
        metavar="PATH",
        help="a video file, folder or list file, taken as at test time (repeatable); default: "
        "clips of the config's --split",
    )
    flow.add_argument(
        "--split",
        default="train",
        choices=("train", "val", "test"),
        help="train (as training sees its clips), val or test",
    )
    flow.add_argument(
        "--clips", type=_positive, default=4, help="draw the first N clips (of --split or --video)"
    )
    flow.add_argument(
        "--index", type=int, action="append", metavar="I", help="a clip index (repeatable)"
    )
    flow.add_argument("--out", default="runs/flow", help="the pictures' folder")

    predict = commands.add_parser(
        "predict", help="a model's classes for videos, and how shuffling or reversing changes them"
    )
    predict.add_argument(
        "inputs",
        nargs="+",
        help="video files, folders of frame images (one video each), folders of videos, or "
        "list files",
    )
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a timematters checkpoint")
    source.add_argument("--model", help=f"a model spec: {MODEL_SPECS}")
    predict.add_argument(
        "--config",
        default=None,
        help="clips for a foreign model (model.num_frames, data.crop_size)",
    )
    predict.add_argument(
        "-o", "--override", action="append", default=[], help="a key=value override of --config"
    )
    predict.add_argument("--top-k", type=_positive, default=5, help="classes to show per clip")
    predict.add_argument(
        "--perturb",
        default=None,  # shuffle,reverse; None: a one-frame model takes no note of the default
        help="perturbations to compare, comma-separated (default: shuffle,reverse): "
        + ", ".join(PERTURBATION_NAMES),
    )
    predict.add_argument("--classes", default=None, help="a file of class names, one per line")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.add_argument(
        "--explain", default=None, metavar="DIR", help="write GradCAM (GIF and PNG strip) here"
    )
    predict.add_argument(
        "--window",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a long video: predict each consecutive window of this many seconds (a timeline)",
    )
    predict.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frames per second for --window (frame folders have none; a video file its own)",
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the shuffled frame orders (one drawn per video and window)",
    )

    export = commands.add_parser(
        "export",
        help="a trained model as a Hugging Face transformers folder or a safetensors file",
    )
    export.add_argument("checkpoint", help="a timematters checkpoint (runs/NAME/checkpoints/...)")
    export.add_argument(
        "--format",
        default="auto",
        choices=("auto", "hf", "safetensors"),
        help="hf: a transformers folder (our TimeSformer, hf: models); safetensors: the "
        "network's weights and how to build it (any model); auto: hf where it can",
    )
    export.add_argument("--out", default=None, help="the folder (default: <checkpoint>_export/)")
    export.add_argument(
        "--overwrite", action="store_true", help="replace files of an export's names in --out"
    )

    table = commands.add_parser(
        "table", help="evaluations already made, side by side (the paper's Tables 2 and 3)"
    )
    table.add_argument(
        "paths",
        nargs="+",
        help="run folders, <checkpoint>_eval folders, diagnose folders, or their JSON files",
    )
    table.add_argument("--name", action="append", help="a row's name (once per row, in order)")
    table.add_argument(
        "--intervals", action="store_true", help="each figure's 95%% interval (± half-width)"
    )
    table.add_argument("--out", default=None, help="also write the table to this markdown file")

    configs = commands.add_parser("configs", help="the presets that ship with timematters")
    config_commands = configs.add_subparsers(dest="configs_command", required=True)
    config_commands.add_parser("list", help="name every preset")
    show = config_commands.add_parser("show", help="print a preset with every default filled in")
    show.add_argument("name", help="a preset (synthetic/time) or a YAML file")
    show.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    copy = config_commands.add_parser("copy", help="copy a preset's file to edit it")
    copy.add_argument("name", help="a preset name")
    copy.add_argument("dest", help="a file or folder to copy it to")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser("check", help="validate a dataset; non-zero exit on problems")
    check.add_argument("config", help="a YAML file or a packaged preset")
    check.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    check.add_argument("--no-decode", action="store_true", help="check files exist, skip decoding")
    check.add_argument("--limit", type=int, default=0, help="check at most N videos per split")
    check.add_argument(
        "--list", default=None, metavar="FILE", help="write every video with a problem (JSON lines)"
    )
    frames = data_commands.add_parser(
        "frames",
        help="write the videos as folders of JPEG frames (faster to read: data.decoder=frames)",
    )
    frames.add_argument("config", help="a YAML file or a packaged preset")
    frames.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    frames.add_argument("--out", required=True, help="the folder for the frame folders")
    frames.add_argument(
        "--split",
        action="append",
        choices=("train", "val", "test"),
        help="a split to extract (repeat; default: train and val)",
    )
    frames.add_argument(
        "--short-side", type=int, default=0, help="resize larger frames to this short side"
    )
    frames.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    frames.add_argument(
        "--workers", type=int, default=None, help="processes (default: data.num_workers)"
    )
    frames.add_argument("--limit", type=int, default=0, help="the first N videos of each split")

    commands.add_parser("backbones", help="list the registered backbones")
    return parser


def _quiet_tensorboard_writer_errors(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's writer thread prints a traceback for a full disk, which the run's next log
    call raises again and the CLI names in one line (engine/metrics.py): that one is kept."""
    writer_thread = type(args.thread).__name__ == "_AsyncWriterThread"
    if not (writer_thread and issubclass(args.exc_type, OSError)):
        threading.__excepthook__(args)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(_resume_flag_before_overrides(argv))
    if extra and args.command == "predict" and _overrides_among(extra):
        # Its positionals are videos: an override after an option gets the -o spelling, not a
        # bare "unrecognized arguments".
        print(f"timematters: error: {_predict_overrides_hint(extra)}", file=sys.stderr)
        return 2
    if extra:  # overrides after an option: argparse leaves them over
        if not hasattr(args, "overrides") or any("=" not in a or a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    if getattr(args, "perturb", None) is not None and hasattr(args, "overrides"):
        names = _comma_list(args.perturb)
        if not names:
            print(
                f"timematters: error: --perturb {args.perturb!r} names none: give {PERTURB_HELP}",
                file=sys.stderr,
            )
            return 2
        args.overrides.append(f"eval.perturbations=[{', '.join(names)}]")
    threading.excepthook = _quiet_tensorboard_writer_errors
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader closed the pipe (`timematters configs list | head`): stop quietly, as Unix
        # tools do; stdout goes to /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as error:
        if os.environ.get("TIMEMATTERS_TRACEBACK", "") not in ("", "0"):
            raise
        code = _exit_code(error)
        if code is None:
            raise
        if _said_by_this_process(error):
            from timematters.engine.runs import Interrupted

            # A stop that was asked for (Ctrl-C, a preemption) is no error.
            label = "" if isinstance(error, Interrupted) else "error: "
            print(f"timematters: {label}{_message(error)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("timematters: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from timematters import __version__

    return __version__


def _message(error: Exception) -> str:
    """The error's line; the operating system's refusals name their whole path and the fix (its
    own reads "[Errno 13] Permission denied: 'last.pth'")."""
    if isinstance(error, PermissionError) and error.filename:
        return f"{error.filename}: {error.strerror}; choose a file or folder that can be written"
    if isinstance(error, OSError) and error.errno in _FULL:
        where = f"cannot write {error.filename}: " if error.filename else ""
        return (
            f"{where}{error.strerror}; free space (or raise the limit) and run the command again "
            "(a run: with --resume, from its last checkpoint)"
        )
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"  # not "[Errno 21] Is a directory: '...'"
    return str(error)


# A disk, quota or file-size limit reached: a stop by the machine, not a user's mistake.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _said_by_this_process(error: Exception) -> bool:
    """Under torchrun, an error every rank meets (a config's, a stop, one rank 0 shared) is
    printed by rank 0 alone: one line, not one per process. Any other is printed where it
    happened."""
    from timematters.engine.distributed import is_main_process
    from timematters.engine.runs import Interrupted

    # A stop is all-reduced: every rank stops at the same step, with the same checkpoint.
    every_rank = isinstance(error, ConfigError | Interrupted)
    return is_main_process() or not (getattr(error, "shared_from_main", False) or every_rank)


def _exit_code(error: Exception) -> int | None:
    """2 for a user's mistake, 1 for a run stopped by its data, None for a bug (traceback)."""
    from timematters.backbones.pretrained import PretrainedKeyError
    from timematters.backbones.protocol import ProtocolError
    from timematters.data.collate import TooManyBadVideos
    from timematters.data.video import DecoderUnavailable
    from timematters.engine.checkpoint import CheckpointWriteError
    from timematters.engine.distributed import OutOfDeviceMemory
    from timematters.engine.runs import Interrupted
    from timematters.engine.train import NonFiniteLossError

    if isinstance(error, Interrupted):
        return error.exit_code
    if isinstance(error, TooManyBadVideos | NonFiniteLossError | CheckpointWriteError):
        return 1
    if isinstance(error, OSError) and error.errno in _FULL:  # a run stopped by its disk
        return 1
    user_mistakes = (
        ConfigError,
        ValueError,
        PretrainedKeyError,
        ProtocolError,  # a user's module that does not honour the backbone protocol
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,  # a folder that cannot be written: choose another
        OutOfDeviceMemory,  # settings that need less memory: the message says which
        DecoderUnavailable,
        ImportError,  # an optional extra not installed: the message names it
    )
    return 2 if isinstance(error, user_mistakes) else None


def _demo(args) -> int:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would run the whole demo
        raise ConfigError(
            "the demo runs in one process: start it without torchrun (timematters demo); "
            "torchrun is for train, eval and diagnose"
        )
    if args.image:
        from timematters.image_demo import run_image_demo

        video_only = {
            "--ablation": args.ablation,
            "--appendix-d": args.appendix_d,
            "--epochs": args.epochs is not None,
            "--perturb": args.perturb != "shuffle",
        }
        given = [flag for flag, on in video_only.items() if on]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: the video demo's option(s); --image takes --quick, --seeds, "
                "--out, --overwrite and --resume"
            )

        out = Path(args.out or ("runs/demo_image_quick" if args.quick else "runs/demo_image"))
        run_image_demo(
            out, quick=args.quick, seeds=args.seeds, overwrite=args.overwrite, resume=args.resume
        )
        return 0
    from timematters.demo import run_demo

    run_demo(
        out=Path(args.out or ("runs/demo_quick" if args.quick else "runs/demo")),
        quick=args.quick,
        seeds=args.seeds,
        ablation=args.ablation,
        appendix_d=args.appendix_d,
        epochs=args.epochs,
        perturbations=_comma_list(args.perturb),
        overwrite=args.overwrite,
        resume=args.resume,
    )
    return 0


def _resume_flag_before_overrides(argv: list[str] | None) -> list[str]:
    """``--resume key=value`` means the flag and then an override, not a checkpoint named
    ``key=value``: spell the flag ``--resume=last`` so that argparse does not take the override."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv[:-1]):
        following = argv[i + 1]
        if arg == "--resume" and "=" in following and not Path(following).is_file():
            argv[i] = "--resume=last"
    return argv


def _run_checkpoint(out: Path) -> Path:
    """The checkpoint a run folder continues from: ``last.pth``, or where only ``best.pth`` is
    left (last.pth deleted, or a kill between the first best.pth and its last.pth), that one: it
    holds the whole training state of its step."""
    from timematters.engine.distributed import is_main_process

    last, best = out / "checkpoints" / "last.pth", out / "checkpoints" / "best.pth"
    if not last.is_file() and best.is_file():
        if is_main_process():
            print(f"[train] {last} is missing: continuing from {best}", flush=True)
        return best
    return last


def _refuse_another_folders_run(args, cfg) -> None:
    """``RUN/config.yaml --resume`` continues ``train.out``, which the file names: for a run
    folder moved or copied since, that is another folder (or none). Said with the override
    that continues the folder the config is in."""
    here = Path(args.config).parent if args.config and Path(args.config).is_file() else None
    given = any(override.startswith("train.out=") for override in args.overrides)
    if here is None or given or not (here / "checkpoints").is_dir():
        return
    out = Path(cfg.train.out)
    if here.resolve() == out.absolute().resolve():
        return
    elsewhere = f"{out}, another run's folder" if out.exists() else f"{out}, which is gone"
    raise ConfigError(
        f"{args.config} continues the run in train.out={elsewhere}, not the run in {here}: add "
        f"train.out={here} to continue that one (a run folder moved or copied keeps its old "
        "train.out)"
    )


def _train(args) -> int:
    from timematters.engine.distributed import is_main_process
    from timematters.engine.evaluate import format_table
    from timematters.engine.runs import hold_run_folder
    from timematters.engine.train import train

    cfg = load_config(args.config, args.overrides)
    resume, overwrite, replace_partial = args.resume, args.overwrite, False
    if resume in ("auto", "last"):
        _refuse_another_folders_run(args, cfg)
    if resume == "auto":
        resume = _run_checkpoint(Path(cfg.train.out))
        if not resume.is_file():  # nothing to continue: a new run (over a partial one's logs)
            # A run still going there is named before this line (by rank 0: under torchrun the
            # others would find rank 0 holding the lock for this moment and stop unsaid).
            if Path(cfg.train.out).is_dir() and is_main_process():
                with hold_run_folder(Path(cfg.train.out)):
                    pass
            if is_main_process():
                print(f"[train] no checkpoint in {cfg.train.out}: starting a new run", flush=True)
            resume, replace_partial = None, True
    elif resume == "last":
        resume = _run_checkpoint(Path(cfg.train.out))
        if not resume.is_file():
            partial = (Path(cfg.train.out) / "config.yaml").is_file()
            start = (
                "the run there left none: start it afresh with --resume auto (or --overwrite)"
                if partial
                else "start the run without --resume"
            )
            raise ConfigError(  # the command's mistake, met by every rank: rank 0 says it
                f"--resume: no checkpoint at {resume} (train.out={cfg.train.out}); {start}, or "
                "name a checkpoint with --resume PATH"
            )
    if resume and args.init_from:
        raise ConfigError("--resume continues a run, --init-from starts a new one: give one")
    if args.init_from and ":" in str(args.init_from) and not Path(args.init_from).exists():
        raise ConfigError(
            f"--init-from {args.init_from}: give a checkpoint or weights file; a foreign model "
            f"comes with its own weights as model.name={args.init_from}"
        )
    result = train(
        cfg,
        resume=resume,
        init_from=args.init_from,
        overwrite=overwrite,
        replace_partial=replace_partial,
    )
    if is_main_process():  # under torchrun every rank has the result; one prints it
        print(format_table({cfg.model.name: result["metrics"]}))
        table4 = Path(cfg.train.out) / "backgrounds.md"  # an ImageNet-9 run's Table 4
        if table4.is_file():
            print(table4.read_text(), end="")
        print(result["summary"])
    return 0


def _eval(args) -> int:
    from timematters.engine.distributed import is_main_process
    from timematters.engine.metrics import to_json
    from timematters.engine.model import evaluate_checkpoint
    from timematters.engine.runs import claim_folder

    cfg = load_config(args.config, args.overrides)
    if cfg.data.dataset == "imagenet9" and args.perturb is not None:
        raise ConfigError(
            f"--perturb {args.perturb}: an ImageNet-9 evaluation scores each image once (one "
            "frame has no order to perturb); its test is the Backgrounds Challenge: drop --perturb"
        )
    spec = args.checkpoint or args.model
    if args.out:
        out = Path(args.out)
    elif args.checkpoint or Path(spec).is_file():
        out = Path(spec).with_name(f"{Path(spec).stem}_eval")
    elif spec.startswith("hf:") and Path(spec.removeprefix("hf:")).is_dir():
        # A local folder (an export, last_export/ of every run): beside it, as for a checkpoint,
        # so that two exports of one name do not share runs/eval/last_export.
        folder = Path(spec.removeprefix("hf:"))
        out = folder.with_name(f"{folder.name}_eval")
    else:  # hf:owner/name -> name; torchvision:r3d_18:w.pth -> r3d_18_w; pkg.mod:f -> f
        name, _, weights = spec.split(":", 1)[-1].partition(":")
        out = Path("runs/eval") / "_".join(filter(None, (Path(name).name, Path(weights).stem)))
    claim = dict(kind="an evaluation", overwrite=False, fix="choose another --out")
    if is_main_process():  # before the work: a run's or a report's folder is refused
        claim_folder(out, **claim, remove=False)  # an earlier evaluation stays if this one fails
    result = evaluate_checkpoint(cfg, spec)
    if not is_main_process():  # under torchrun every rank has the gathered result; one writes it
        return 0
    metrics = result.metrics()
    table = result.table(Path(spec).name if args.checkpoint else spec)
    claim_folder(out, **claim)  # the earlier evaluation's files go now, with nothing stale left
    out.mkdir(parents=True, exist_ok=True)
    # ImageNet-9's Table 4 under the names a run gives it, which `table` reads.
    stem = "backgrounds" if cfg.data.dataset == "imagenet9" else "eval"
    (out / f"{stem}.json").write_text(to_json(metrics))
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    bad = result.bad
    if bad:
        what = "image" if stem == "backgrounds" else "clip"
        print(f"{counted(len(bad), what)} could not be decoded (not scored; see bad_videos.jsonl)")
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'}")
    if bad:
        result.check_bad(cfg.data.max_bad_fraction, out / "bad_videos.jsonl")
    return 0


def _diagnose(args) -> int:
    from timematters.diagnostics.report import run_diagnose

    if not args.models:
        raise ConfigError("diagnose needs a model: --model SPEC (or --checkpoint PATH), repeatable")
    out = Path(args.out)
    run_diagnose(
        load_config(args.config, args.overrides),
        args.models,
        out,
        names=args.name,
        probe_clips=None if args.no_probe else (args.probe_clips, args.probe_clips),
        gradcam_clips=args.gradcam_clips,
        gradcam_indices=args.gradcam_index,
    )  # its last line names the report
    return 0


def _predict(args) -> int:
    import json
    from collections import Counter

    import torch

    from timematters.diagnostics.predict import (
        VideoDecodeError,
        explain_prediction,
        predict,
        predict_windows,
        summarise,
    )

    _check_predict_options(args)
    cfg = load_config(args.config, args.override) if args.config else None
    model, clip, classes = _predict_model(args, cfg)
    asked = args.perturb is not None
    perturbations = _comma_list(args.perturb if asked else "shuffle,reverse")
    from timematters.engine.model import describe_model

    one_frame = (clip.get("num_frames") or describe_model(model).get("num_frames")) == 1
    if one_frame:  # an image model: every input one image, nothing to reorder (said if asked)
        perturbations = perturbations if asked else []
    if one_frame and perturbations:
        print(
            "timematters: a model of one frame: its classes only (a frame order to shuffle or "
            "reverse it has none)",
            file=sys.stderr,
        )
        perturbations = []
    explain = args.explain
    if explain:  # refused before any work, not after the predictions
        from timematters.engine.runs import check_writable

        check_writable(Path(explain), kind="the GradCAM pictures")
    videos = _predict_inputs(args.inputs, cfg, images=one_frame)
    results, undecodable, pictures = [], [], Counter()
    # One generator for all: each video (and window) is shuffled by a permutation of its own, so
    # that the summary over many is not one permutation's.
    shuffles = torch.Generator().manual_seed(args.seed)
    options = dict(classes=classes, top_k=args.top_k, perturbations=perturbations, **clip)
    for video in videos:
        try:
            if args.window is None:
                found = [predict(model, video, generator=shuffles, **options)]
            else:
                found = predict_windows(
                    model, video, seconds=args.window, fps=args.fps, generator=shuffles, **options
                )
        except VideoDecodeError as error:  # skipped and reported; the others are still predicted
            print(f"timematters: skipped {error}", file=sys.stderr)
            undecodable.append(video)
            continue
        results += found
        if not args.json:
            print("\n".join(result.describe() for result in found))
        if explain:
            # Two videos of one name (a/clip.mp4, b/clip.mp4) keep a picture each.
            pictures[video.stem] += 1
            name = video.stem + (f"_{pictures[video.stem]}" if pictures[video.stem] > 1 else "")
            try:
                written = explain_prediction(model, video, explain, name=name, **clip)
            except NotImplementedError as error:  # the model's limit: said once, for every video
                print(f"  explain: {error}", file=sys.stderr if args.json else sys.stdout)
                explain = None
            else:
                if not args.json:
                    print(f"  explained: {', '.join(map(str, written))}")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    elif len(results) > 1 and perturbations:
        print(summarise(results, unit="windows" if args.window is not None else "videos"))
    if undecodable:
        print(
            f"timematters: {len(undecodable)} of {counted(len(videos), 'video')} could not be decoded "
            "(listed above) and were not predicted",
            file=sys.stderr,
        )
        return 1
    return 0


def _check_predict_options(args) -> None:
    """predict's option mistakes, refused before a model is loaded."""
    if _overrides_among(args.inputs):  # `predict clip.mp4 data.root=vids ...`
        raise ConfigError(_predict_overrides_hint(args.inputs))
    if args.override and not args.config:
        raise ConfigError(
            f"-o {args.override[0]}: overrides change --config's clips; give the config they "
            "apply to (--config videolist/time, or the run's config.yaml)"
        )
    validate_device(args.device, given=f"--device {args.device}")
    if args.window is not None and args.explain:
        raise ConfigError("--explain draws one clip of each video: leave out --window")
    if args.window is not None and not 0 < args.window < math.inf:
        raise ConfigError(f"--window {args.window}: give a positive number of seconds")
    if args.fps is not None and args.window is None:
        raise ConfigError(f"--fps {args.fps}: the frame rate of --window's seconds; give --window")
    if args.fps is not None and not 0 < args.fps < math.inf:
        raise ConfigError(
            f"--fps {args.fps}: give the videos' frames per second, a positive number"
        )


def _predict_model(args, cfg) -> tuple[Any, dict[str, Any], list[str] | None]:
    """The model on its device, the clips to make (the config's, made as its evaluation makes
    them; without one, as the checkpoint's run did: {}) and the class names given."""
    from timematters.engine.distributed import resolve_device
    from timematters.engine.model import load_model

    model = load_model(args.checkpoint or args.model, cfg).to(resolve_device(args.device))
    clip = {}
    if cfg:  # a model that takes any size needs them; one with its own refuses others
        from timematters.data.sampling import EvalClip

        clip = dict(
            num_frames=cfg.model.num_frames,
            frame_size=cfg.data.crop_size,
            eval_clip=EvalClip.of(cfg.data, cfg.eval),
        )
    classes = None
    if args.classes:
        from timematters.data.videolist import read_class_list

        classes = read_class_list(args.classes)
    if getattr(model, "zero_shot", False):  # a video-text model scores the classes it is given
        if not classes:
            raise ConfigError(
                f"{args.model} is a zero-shot video-text model: give the classes to score, "
                "--classes FILE (one name per line)"
            )
        model.set_class_names(classes, prompt=cfg.model.prompt if cfg else "{}")
    return model, clip, classes


def _predict_inputs(inputs: list[str], cfg, *, images: bool) -> list[Path]:
    """The videos (or images) the inputs name; a folder's files left out are said."""
    from timematters.diagnostics.predict import list_videos

    left_out: list[Path] = []
    root = cfg.data.root if cfg else None
    videos = list_videos(inputs, root=root, images=images, left_out=left_out)
    if left_out:  # a video of an extension not known here would otherwise pass unsaid
        names = ", ".join(path.name for path in left_out[:5]) + (
            ", ..." if len(left_out) > 5 else ""
        )
        print(
            f"timematters: left out {counted(len(left_out), 'file')} that are not videos by "
            f"their extension ({names}); name one on its own to try it as a video",
            file=sys.stderr,
        )
    return videos


def _overrides_among(items: list[str]) -> list[str]:
    """The items that read as config overrides (``data.root=vids``) and name no file."""
    from dataclasses import fields

    from timematters.config import Config

    sections = {f.name for f in fields(Config)}
    found = []
    for item in items:
        key, equals, _ = item.partition("=")
        parts = key.split(".")
        dotted = len(parts) > 1 and all(part.isidentifier() for part in parts)
        if equals and dotted and parts[0] in sections and not Path(item).exists():
            found.append(item)
    return found


def _predict_overrides_hint(items: list[str]) -> str:
    overrides = _overrides_among(items)
    spelled = " ".join(f"-o {item}" for item in overrides)
    return (
        f"predict takes videos as its arguments, and --config's overrides as -o KEY=VALUE: "
        f"{spelled} (not {' '.join(overrides)})"
    )


def _configs(args) -> int:
    import shutil

    from timematters.config import config_to_dict, find_config, list_presets

    if args.configs_command == "list":
        print("\n".join(list_presets()))
        return 0
    if args.configs_command == "show":
        import yaml

        cfg = load_config(args.name, args.overrides)
        print(f"# {args.name}, with every default filled in")
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    source, dest = find_config(args.name), Path(args.dest)
    if dest.is_dir() or args.dest.endswith(("/", os.sep)):  # a folder, there or to be made
        dest = dest / source.name
    if dest.exists():
        raise FileExistsError(f"{dest} exists; choose another destination")
    blocking = next((folder for folder in dest.parents if folder.is_file()), None)
    if blocking is not None:
        raise ConfigError(f"{blocking} is a file, not a folder: choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    print(f"copied {args.name} to {dest}")
    return 0


def _data(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.data_command == "frames":
        from timematters.data.frames import extract_frames
        from timematters.engine.runs import claim_folder

        # A run's (or another command's) folder is refused, and one that cannot be written.
        fix = "choose another --out for the frame folders"
        claim_folder(Path(args.out), kind="frame folders", overwrite=False, fix=fix, remove=False)
        return extract_frames(
            cfg,
            args.out,
            splits=tuple(args.split or ("train", "val")),
            short_side=args.short_side,
            quality=args.quality,
            workers=args.workers,
            limit=args.limit,
        )
    from timematters.data.check import check_dataset

    return check_dataset(cfg, decode=not args.no_decode, limit=args.limit, list_to=args.list)


def _flow(args) -> int:
    from timematters.diagnostics.flow_view import view_flow_labels

    if args.videos and args.index:
        raise ConfigError("--index picks clips of --split; with --video every video is drawn")
    cfg = load_config(args.config, args.overrides)
    result = view_flow_labels(
        cfg, args.out, videos=args.videos, split=args.split, clips=args.clips, indices=args.index
    )
    return 1 if result["skipped"] else 0  # a video that could not be decoded, as predict


_TABLE_MARK = "<!-- written by timematters table -->"  # invisible where markdown is shown


def _written_by_table(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as file:
            return file.readline().strip() == _TABLE_MARK
    except (OSError, UnicodeDecodeError):
        return False


def _table(args) -> int:
    from timematters.diagnostics.tables import results_table

    if args.out:  # refused before the table, not after it
        from timematters.engine.runs import check_writable

        out = Path(args.out)
        if out.is_dir():
            raise ConfigError(f"--out {out} is a folder: give a file name, {out / 'table.md'}")
        # Someone's video, a run's eval.md, a model card: only a table this command wrote is
        # replaced (its first line says so).
        if out.exists() and not _written_by_table(out):
            raise ConfigError(
                f"--out {out} is a file that is not a table `timematters table` wrote: give a "
                "new .md file (a table written there earlier is replaced)"
            )
        if out.suffix.lower() != ".md":
            raise ConfigError(f"--out {out}: the table is markdown, give a .md file")
        check_writable(out.parent, kind="the table")
    table = results_table(args.paths, names=args.name, intervals=args.intervals)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"{_TABLE_MARK}\n{table}\n")
        print(f"wrote {out}")
    return 0


def _export(args) -> int:
    from timematters.engine.export import export

    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.with_name(f"{checkpoint.stem}_export")
    info = export(checkpoint, out, format=args.format, overwrite=args.overwrite)
    classes = info["classes"]
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    clips = info["clips"]
    print(f"exported {info['model']} ({info['format']}) to {out}: {', '.join(info['files'])}")
    print(f"  classes: {len(classes)} ({shown})")
    print(
        f"  clips: {counted(clips['num_frames'], 'frame')} of {clips['frame_size']}², "
        f"{info['layout']}, "
        f"mean {_numbers(clips['mean'])}, std {_numbers(clips['std'])} on [0, 1] pixels"
    )
    if "build" in info:
        print(f"  build: {info['build']} (network: export.json)")
    if "timm" in info:
        print(f"  or in timm (images [B, C, H, W]): {info['timm']}")
    print(f"  load: {info['load']}")
    if "spec" in info:
        print(f"  in timematters: --model {info['spec']}")
    print(f"  left out: {', '.join(info['left_out'])}")
    return 0


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _backbones(args) -> int:
    from timematters.backbones import list_backbones

    print("\n".join(list_backbones()))
    return 0


_COMMANDS = {
    "demo": _demo,
    "train": _train,
    "eval": _eval,
    "diagnose": _diagnose,
    "predict": _predict,
    "flow": _flow,
    "export": _export,
    "table": _table,
    "configs": _configs,
    "data": _data,
    "backbones": _backbones,
}

if __name__ == "__main__":
    sys.exit(main())
