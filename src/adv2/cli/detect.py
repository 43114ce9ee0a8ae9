"""``adv2 detect fit|score``: fit a detector's thresholds on benign images, score images."""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import torch

from adv2.attack_config import AttackConfig, check_setting
from adv2.attacks import SettingError
from adv2.cli.helptext import shown, with_default
from adv2.cli.options import command_parser, interpreter_name, model_options, usage_error
from adv2.data import load_dataset
from adv2.detection import (DETECTORS, SQUEEZER_NAMES, build_detector, detector_class,
                            load_detector, write_scores)
from adv2.key_value import parse_setting
from adv2.models import ModelError, load_model

log = logging.getLogger("adv2")


def _summary(cls: type) -> str:
    """The first line of a class's docstring, lower-cased, without its full stop."""
    line = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
    return line[:1].lower() + line[1:]


def _detector_help() -> str:
    """Every registered detector, its one-line summary and its settings' defaults."""
    return "; ".join(
        f"{name}: {_summary(cls)} (settings: "
        + ", ".join(f"{key} {shown(value)}" for key, value in cls.setting_defaults().items())
        + ")" for name, cls in DETECTORS.items())


#: the settings of registered detectors that ``adv2 detect fit`` takes as options of their own
DETECTOR_OPTIONS = ("squeezers", "interpreters")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``adv2 detect``'s parser and those of its actions, ``fit`` and ``score``."""
    p = command_parser(sub, "detect", "detect adversarial inputs: fit a detector's thresholds "
                                      "on benign images, score images")
    actions = p.add_subparsers(dest="action", required=True)
    fit = command_parser(actions, "fit",
                         "fit a detector's thresholds on benign images (a JSON file)")
    fit.add_argument("--detector", choices=list(DETECTORS), default="squeeze",
                     help=with_default(_detector_help(), "squeeze"))
    fit.add_argument("--squeezers", nargs="+", help=with_default(
        "squeeze: bit-<b>, median-<k>x<k>, nlm-<search>-<patch>-<h>", " ".join(SQUEEZER_NAMES)))
    fit.add_argument("--interpreters", nargs="+", type=interpreter_name, help=with_default(
        "ensemble: two or more interpreters whose maps of the predicted class are compared",
        " ".join(DETECTORS["ensemble"].setting_defaults()["interpreters"])))
    fit.add_argument("--detector-setting", metavar="KEY=VALUE", action="append", default=[],
                     dest="detector_settings", help=with_default(
                         "another setting of the detector (a keyword of its class; VALUE a "
                         "JSON literal or a string), repeatable, e.g. ks=[0.1,0.2]", "none"))
    fit.add_argument("--fpr", type=float, default=0.05,
                     help=with_default("false-positive rate on the benign images", 0.05))
    fit.add_argument("--out", required=True, help="fitted detector file to write (JSON; "
                                                  "required)")
    fit.add_argument("--folds", type=int, default=10, help=with_default(
        "cross-validation folds (at most one per image) for the held-out false-positive rate "
        "printed beside the thresholds (0: skip)", 10))
    fit.add_argument("--seed", type=int, default=0,
                     help=with_default("seed of the cross-validation folds", 0))
    score = command_parser(actions, "score", "score and flag images with a fitted detector")
    score.add_argument("--thresholds", required=True,
                       help="file written by 'adv2 detect fit' (required)")
    score.add_argument("--out", help=with_default(
        "also write per-image scores and flags here (CSV)", "print the rates only"))
    device = AttackConfig.device
    for q in (fit, score):
        q.add_argument("--images", required=True,
                       help="an image file or a folder of images (required)")
        q.add_argument("--limit", type=int, help=with_default("use at most N images", "all"))
        model_options(q)
        q.add_argument("--device", default=device,
                       help=with_default("the torch device (cpu, cuda, cuda:N)", device))


def _detector_settings(args: argparse.Namespace) -> dict[str, object]:
    """The detector's settings from ``--detector-setting`` and its own options; a
    SettingError names the option of a bad one (``--squeezers``, ``--detector-setting ks``)."""
    given = dict(map(parse_setting, args.detector_settings))
    given |= {key: getattr(args, key) for key in DETECTOR_OPTIONS
              if getattr(args, key) is not None}
    try:
        detector_class(args.detector).check_settings(given)
    except SettingError as exc:
        option = exc.key if exc.key in DETECTOR_OPTIONS else f"detector_setting {exc.key}"
        raise SettingError(option, exc.problem) from None
    return given


def execute(args: argparse.Namespace) -> int:
    """Run ``adv2 detect fit`` (prints the fitted state and the held-out false-positive rates)
    or ``adv2 detect score`` (prints the detection rates). Returns the exit code."""
    try:
        check_setting("limit", args.limit)
        settings = _detector_settings(args) if args.action == "fit" else {}
        model = load_model(args.model, args.weights, args.device)
        samples = load_dataset(args.images, limit=args.limit).samples
        if args.action == "fit":
            detector = build_detector(args.detector, model, settings)
        else:
            detector = load_detector(model, args.thresholds)
    except (ModelError, FileNotFoundError, ValueError) as exc:
        return usage_error(exc)
    if not samples:
        log.error("no readable images in %s", args.images)
        return 1
    scores = detector.scores(np.stack([s.image for s in samples]))
    finite = torch.isfinite(scores).all(dim=1)
    for sample, ok in zip(samples, finite.tolist()):
        if not ok:
            log.error("skipping %s: its %s scores are not finite", sample.name, detector.name)
    samples, scores = [s for s, ok in zip(samples, finite.tolist()) if ok], scores[finite]
    if not samples:
        log.error("no image of %s has finite scores", args.images)
        return 1
    if args.action == "fit":
        fit = detector.fit_held_out(scores, args.fpr, args.folds, args.seed)
        detector.save(args.out)
        summary = detector.to_dict() | {"n_images": len(samples),
                                        "seconds_per_image": detector.seconds_per_input}
        if fit.held_out is not None:
            summary["cross_validated_fpr"] = fit.held_out_fpr(detector.names)
        print(json.dumps(summary, indent=2))
        return 0
    report = detector.decide(scores)
    if args.out:
        write_scores(args.out, [s.name for s in samples], detector.names, report)
    rates = report.rates()
    print(json.dumps({"n_images": len(samples), "detector": detector.name,
                      "detection_rate": dict(zip(detector.names, rates[:-1])),
                      "joint_detection_rate": rates[-1],
                      "seconds_per_image": detector.seconds_per_input}, indent=2))
    return 0
