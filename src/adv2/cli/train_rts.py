"""``adv2 train-rts``: train the real-time saliency (RTS) network for a model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from adv2.attack_config import check_setting
from adv2.cli.helptext import with_default
from adv2.cli.options import command_parser, model_options, usage_error
from adv2.data import load_dataset
from adv2.interpreters.rts import checkpoint_path
from adv2.models import ModelError, load_model
from adv2.preparation import labels_of, predict
from adv2.rts import (DEFAULT_ENCODER, HoldOut, SaliencyLoss, TrainConfig, TrainSettings,
                      train)

log = logging.getLogger("adv2")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``adv2 train-rts``'s parser."""
    d = TrainConfig()
    p = command_parser(sub, "train-rts", "train the RTS saliency network for a model")
    p.add_argument("--images", required=True, help="a folder of training images (required)")
    p.add_argument("--labels", help=with_default(
        "CSV with path,label (index, synset or class name)",
        "<synset>_* names or class folders, else the model's prediction"))
    p.add_argument("--limit", type=int, help=with_default("use at most N images", "all"))
    p.add_argument("--holdout", type=int, default=0, help=with_default(
        "leave out N images (a seeded choice, listed in the checkpoint) for evaluating the "
        "masks", 0))
    model_options(p)
    p.add_argument("--device", default="cpu", help=with_default(
        "the torch device the classifier and the saliency network train on", "cpu"))
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help=with_default(
        "the pretrained network whose stages feed the decoder (the paper's design), or "
        "'shared': the classifier itself, its head the selector", DEFAULT_ENCODER))
    p.add_argument("--selector-steps", type=int, default=d.selector_steps, help=with_default(
        "phase 1: steps training the selector alone (not in the shared design)",
        d.selector_steps))
    p.add_argument("--selector-batch-size", type=int, default=d.selector_batch_size,
                   help=with_default("phase 1: images per selector step", d.selector_batch_size))
    p.add_argument("--steps", type=int, default=d.steps, help=with_default(
        "phase 2: steps training the decoder on the saliency loss", d.steps))
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=with_default("phase 2: images per decoder step", d.batch_size))
    p.add_argument("--lr", type=float, default=d.lr,
                   help=with_default("Adam's learning rate of the decoder (of the selector's "
                                     "two gate scalars: 10×)", d.lr))
    p.add_argument("--jitter", type=float, default=d.jitter,
                   help=with_default("colour jitter of the augmentation (0: none)", d.jitter))
    p.add_argument("--area-warmup", type=float, default=d.area_warmup, help=with_default(
        "fraction of the steps over which the area weight grows from 0", d.area_warmup))
    confidence = SaliencyLoss().destroyer_confidence
    p.add_argument("--destroyer-confidence", type=float, default=confidence, help=with_default(
        "the saliency loss's destroyer term stops pulling once the removed image's class logit "
        "is this far below the best other", confidence))
    p.add_argument("--init", help=with_default(
        "an rts.pt to start from (fine-tuning; --selector-steps 0 keeps its selector); the "
        "images it was trained on count as trained on, never as held out", "from scratch"))
    p.add_argument("--seed", type=int, default=d.seed,
                   help=with_default("seed of the hold-out choice and of training", d.seed))
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help=with_default("write last.pt every this many steps and at the end",
                                     d.checkpoint_every))
    p.add_argument("--out", required=True, help="folder for last.pt (resumable: rerun the "
                                                "command to continue) and rts.pt (required)")


def execute(args: argparse.Namespace) -> int:
    """Run ``adv2 train-rts`` on the images its hold-out leaves; prints where ``rts.pt`` is.
    Returns the exit code."""
    try:
        check_setting("limit", args.limit)
        init = checkpoint_path(args.init, args.model) if args.init else None
        if init is not None and not init.is_file():
            raise FileNotFoundError(f"--init: {init} not found")
        model = load_model(args.model, args.weights, args.device)
        encoder = None if args.encoder == "shared" else load_model(args.encoder,
                                                                   device=args.device)
        samples = load_dataset(args.images, args.labels, args.limit).samples  # logs bad files
    except (ModelError, FileNotFoundError, ValueError) as exc:
        return usage_error(exc)
    split = HoldOut.split(samples, args.holdout, args.seed)
    if not split.train:
        log.error("no training images left in %s", args.images)
        return 1
    images = np.stack([s.image for s in split.train])
    labels = labels_of(split.train, predict(model, images, 32).argmax(dim=1))
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, area_warmup=args.area_warmup,
                      selector_steps=args.selector_steps,
                      selector_batch_size=args.selector_batch_size, jitter=args.jitter)
    loss = SaliencyLoss(destroyer_confidence=args.destroyer_confidence)
    meta = split.meta(_command_line(args), str(args.images), args.seed)
    try:
        train(model, images, labels, args.out, TrainSettings(cfg, loss, meta, init=init), encoder)
    except (ModelError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(f"checkpoint: {(Path(args.out) / 'rts.pt').resolve()}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The ``adv2 train-rts`` command with every option that has a value, as ``rts.pt``
    records it."""
    options = {k: v for k, v in vars(args).items()
               if v is not None and k not in ("command", "verbose")}
    return "adv2 train-rts " + " ".join(f"--{k.replace('_', '-')} {v}"
                                        for k, v in options.items())
