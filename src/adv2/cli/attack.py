"""``adv2 attack``: PGD or ADV² against one interpreter (or several at once) on an image or a
folder."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from adv2 import pipeline
from adv2.attack_config import AttackConfig, check_setting
from adv2.attacks import ATTACKS, DISPLAY_NAMES, MAP_LOSSES, OPTIMIZERS, PREDICTION_LOSSES
from adv2.attacks.adaptive import ADAPTIVE_DEFAULTS
from adv2.attacks.settings import THREATS
from adv2.blackbox import ANSWERS, PLACEMENTS, RandomSearch
from adv2.cli.helptext import attack_defaults, blackbox_defaults, with_default
from adv2.cli.options import (command_parser, interpreter_name, model_options, number,
                              usage_error)
from adv2.data import load_dataset
from adv2.interpreters import MASK_STRATEGIES, plugins
from adv2.interpreters.rts import SHIPPED
from adv2.key_value import parse_setting
from adv2.models import ModelError, load_model
from adv2.target_maps import KINDS

#: old flags for interpreter settings: their dest → (the interpreter, its setting)
ALIASES = {"mask_strategy": ("mask", "strategy"), "rts_checkpoint": ("rts", "checkpoint")}


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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``adv2 attack``'s parser."""
    p = command_parser(sub, "attack", "attack a folder of images (or one image)")
    d = AttackConfig()
    model_options(p)
    p.add_argument("--interpreter", type=interpreter_name, default=d.interpreter, help=with_default(
        f"{plugins.forms()} (docs/interpreters-custom.md)", d.interpreter))
    p.add_argument("--attack", choices=list(ATTACKS), default=d.attack, help=with_default(
        ", ".join(f"{name} ({DISPLAY_NAMES[name]})" for name in ATTACKS)
        + ": PGD changes the prediction only; ADV² also pulls the interpreter's map of the "
          "adversarial image toward the target map (--target-map)", d.attack))
    p.add_argument("--images", required=True,
                   help="an image file or a folder of images (required)")
    p.add_argument("--labels", help=with_default(
        "CSV with path,label (index, synset or class name)",
        "<synset>_* names or class folders, else the model's prediction"))
    p.add_argument("--limit", type=int, help=with_default("attack at most N images", "all"))
    p.add_argument("--seed", type=int, default=d.seed, help=with_default(
        "the seed of the random choices, each drawn with the image's name: target classes, "
        "target maps, PGD's random start, a black-box search's squares", d.seed))
    p.add_argument("--eps", type=number, default=d.eps,
                   help=with_default("L∞ budget in [0,1] units (a number or a fraction)", d.eps))
    p.add_argument("--steps", type=int, help=f"attack steps ({attack_defaults('steps')})")
    p.add_argument("--warm-steps", type=int,
                   help=f"ADV²: maximum PGD warm-start steps ({attack_defaults('warm_steps')})")
    p.add_argument("--lam", help="ADV² λ schedule: '5' constant, '5:10' linear, "
                                 "'1,2,4@0.3,0.6' piecewise over progress "
                                 f"({attack_defaults('lam')}); "
                                 "black-box ADV²: a constant, the map term's weight (default: "
                                 f"{blackbox_defaults('lam')})")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                   help=f"update rule; PGD takes sign steps ({attack_defaults('optimizer')})")
    p.add_argument("--lr", type=number,
                   help=f"step size / learning rate ({attack_defaults('lr')})")
    p.add_argument("--lr-decay", type=number,
                   help="ADV²: final step size relative to the first, linear "
                        f"({attack_defaults('lr_decay')})")
    p.add_argument("--pred-loss", choices=sorted(PREDICTION_LOSSES),
                   help=f"prediction loss ({attack_defaults('pred_loss')})")
    p.add_argument("--map-loss", choices=sorted(MAP_LOSSES),
                   help=f"ADV² map loss ({attack_defaults('map_loss')})")
    p.add_argument("--patience", type=int,
                   help="ADV²: stop an image after this many judgements (steps, or every "
                        "k steps for an interpreter judged every k; black-box: queries) "
                        f"without improvement, 0: never ({attack_defaults('patience')}; black-box: "
                        "never)")
    p.add_argument("--lam-search", type=int,
                   help="ADV²: rerun the joint stage this many times with each image's λ "
                        "raised after a run that bettered the warm start's map and lowered "
                        "after one that did not, keeping each image's best "
                        f"({attack_defaults('lam_search')})")
    p.add_argument("--random-start", action="store_true",
                   help=with_default("PGD: random start in the ball", d.random_start))
    adaptive = {name: entry.adaptive for name, entry in ATTACKS.items() if entry.adaptive}
    p.add_argument("--adaptive", metavar="DETECTOR_FILE", nargs="+", help=with_default(
        "the attack's adaptive form ("
        + ", ".join(f"{name}: {entry.display_name}" for name, entry in adaptive.items())
        + "), which also evades the detectors fitted by 'adv2 detect fit' (their JSON files; "
          "with several, success means undetected by every one); its joint stage defaults to "
          f"{ADAPTIVE_DEFAULTS['steps']} steps without early stop (--steps, --patience "
          "override)", "the plain attack"))
    p.add_argument("--threat", choices=list(THREATS), default=d.threat, help=with_default(
        "white-box: the attack differentiates the model and the interpreter; black-box: it "
        "sees only a query oracle's answers (--answers), within --queries per image: "
        f"{DISPLAY_NAMES['pgd']} becomes {ATTACKS['pgd'].black_box.display_name} (Square-"
        f"style, on the prediction), {DISPLAY_NAMES['adv2']} "
        f"{ATTACKS['adv2'].black_box.display_name} (the same search on margin + λ·map "
        "distance)", d.threat))
    p.add_argument("--answers", choices=list(ANSWERS), default=d.answers, help=with_default(
        "black-box: what the oracle answers per image: the prediction as scores "
        "(probabilities), logits or label, with +map the map of the predicted class "
        "(the search needs scores or logits; black-box ADV² the map)", d.answers))
    p.add_argument("--queries", type=int, default=d.queries, help=with_default(
        "black-box: the query budget per image (every image the oracle answers is one)",
        d.queries))
    p.add_argument("--surrogate", help=with_default(
        "black-box: local models (--model names joined by '+', not the attacked one) whose "
        "transfer attack (momentum + input diversity on their summed loss) starts the search",
        "Square's random start"))
    p.add_argument("--stop-iou", type=number, help=with_default(
        "black-box ADV²: stop an image once it predicts its target with this IoU between the "
        "oracle's map and the target map", blackbox_defaults("stop_iou", none="off")))
    p.add_argument("--p-init", type=number, help=with_default(
        "black-box: the fraction of the image the search's first square covers (it shrinks "
        "on Square's schedule); unset, the prediction-only search takes Square's "
        f"{RandomSearch.p_init:g} and black-box ADV² its interpreter's",
        blackbox_defaults("p_init")))
    p.add_argument("--placement", choices=list(PLACEMENTS), default=d.placement,
                   help=with_default(
                       "black-box: where the search's squares go: uniform (Square's), or map "
                       "(on an image that predicts its target, centred where the oracle's map "
                       "is drawn in proportion to its distance from the target map)",
                       d.placement))
    p.add_argument("--rts-checkpoint", action=_Alias, help=with_default(
        "RTS: checkpoint from 'adv2 train-rts'; the same as --interpreter-setting "
        "checkpoint=... (giving both is an error)", "the one shipped for the model: "
        + ", ".join(sorted(SHIPPED)) + " has one"))
    p.add_argument("--mask-strategy", action=_Alias, choices=MASK_STRATEGIES, help=with_default(
        "MASK: track (warm-started inner masks + unrolled lookahead) or alt (the inner "
        "objective at the target mask, cheap); the same as --interpreter-setting strategy=... "
        "(giving both is an error)", "track"))
    p.add_argument("--interpreter-setting", action=_Setting, default=[], metavar="KEY=VALUE",
                   dest="interpreter_settings", help=with_default(
                       "an interpreter setting other than its default, e.g. lr=0.05 or "
                       "iterations=500 for MASK (repeatable; keyword arguments of its class; "
                       "VALUE read as JSON, else a string, and checked against the keyword's "
                       "type; grad.pool=8 sets one member of a joint interpreter)",
                       "the class's defaults"))
    p.add_argument("--step-search", action=argparse.BooleanOptionalAction, default=None,
                   help="ADV²: per-example step-length search that keeps the target winning "
                        f"({attack_defaults('step_search')})")
    p.add_argument("--target-class", type=int, help=with_default(
        "one target class for every image", "a random class other than the image's label, "
        "seeded by --seed and the image's name"))
    p.add_argument("--target-map", choices=KINDS, default=d.target_map, help=with_default(
        "the map ADV² pulls the adversarial image's map toward, and the map L1 and IoU are "
        "measured against: benign (the interpreter's map of the clean image for its label: "
        "the explanation looks untouched; the paper's), other (the map of another image of "
        "the set that the model classifies correctly as the target class, a seeded choice; "
        "targets are drawn among those classes), shape (a random disc or rotated rectangle, "
        "seeded per image)", d.target_map))
    p.add_argument("--support", default=d.support, help=with_default(
        "where the perturbation may live, in every stage: full, edges[:τ] (AdvEdge: Sobel "
        "magnitude > τ = 0.1, dilated 1 px), target-map[:q[:σ]] (the top q = 0.5 of the "
        "target map, blurred by σ px, default 0) or a mask image / folder of masks named as "
        "the inputs (white = free); ADV² with a support other than full takes the defaults "
        "marked 'with a support' in the options' help", d.support))
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=with_default(
        "images attacked together: a unit of work, recorded when all its images are done, so "
        "a killed run redoes at most the unit it was in ('adv2 run' has its own batch_size: "
        "'adv2 run -h' says why it differs)", d.batch_size))
    p.add_argument("--device", default=d.device, help=with_default(
        "the torch device everything runs on (cpu, cuda, cuda:N)", d.device))
    p.add_argument("--out", required=True, help="output directory; rerunning the same command "
                                                "resumes an interrupted run (required)")
    p.add_argument("--overwrite", action="store_true", help=with_default(
        "start afresh in an --out made with other settings (deletes its results)", False))


def attack_config(args: argparse.Namespace) -> AttackConfig:
    """The attack's settings from the parsed options (an alias flag becomes its interpreter's
    setting)."""
    names = {f.name for f in fields(AttackConfig)}
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
    return AttackConfig(**values)


def execute(args: argparse.Namespace) -> int:
    """Run ``adv2 attack``; prints the summary. Returns the exit code."""
    try:
        cfg = attack_config(args)
        cfg.validate()
        check_setting("limit", args.limit)
        model = load_model(args.model, args.weights, args.device)
        data = load_dataset(args.images, args.labels, args.limit)
        summary = pipeline.run(cfg, model, data.samples, args.out, data.errors,
                               overwrite=args.overwrite, ignored=data.ignored,
                               warnings=data.warnings)
    except (ModelError, FileNotFoundError, ValueError) as exc:
        return usage_error(exc)
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, indent=2))
    print(f"report: {Path(args.out).resolve()}")
    return 0 if summary["n_images"] else 1
