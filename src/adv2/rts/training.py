"""Training the saliency network with the original saliency loss (Dabkowski & Gal 2017,
:mod:`adv2.rts.loss`).

Training has the original's two phases: phase 1 trains the selector alone on whether the class is
in the image (binary cross entropy of :meth:`SaliencyNet.exists_logit`, fake labels with
probability 1/2); phase 2 trains the decoder on the saliency loss against the explained
classifier as a black box. The encoder is frozen throughout (as the original's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from tqdm import tqdm

from adv2.data import to_tensor
from adv2.records import atomic_write
from adv2.models import Classifier, ModelError, load_model, load_weights, model_digest
from adv2.rts.loss import SaliencyLoss
from adv2.rts.network import SaliencyNet

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of :func:`train` (saved in the checkpoint)."""

    steps: int = 400  # phase 2 (the decoder)
    batch_size: int = 12
    lr: float = 1e-3
    weight_decay: float = 1e-4
    fake_prob: float = 0.3
    #: phase 1 (the selector; skipped in the shared design, whose selector is the classifier's)
    selector_steps: int = 200
    selector_batch_size: int = 16
    selector_fake_prob: float = 0.5
    #: phase 1's learning rate of the embeddings (those of one class move only when it is drawn;
    #: without weight decay, which would shrink every row); the gate's scalars use ``lr`` × 10
    selector_lr: float = 1e-4
    min_scale: float = 0.3  # RandomResizedCrop's smallest area fraction
    #: colour jitter strength (brightness, contrast, saturation; hue a tenth of it); 0: none
    jitter: float = 0.3
    #: the area weight grows linearly from 0 over this fraction of the steps; 0 (the original
    #: constant weight, used for the shipped checkpoint) unless masks collapse early
    area_warmup: float = 0.0
    seed: int = 0
    checkpoint_every: int = 25


@dataclass
class TrainSettings:
    """What :func:`train` takes besides the networks, the images and the output folder.

    Arguments:
        config: the training settings (saved in the checkpoints).
        loss: the saliency loss of phase 2.
        meta: recorded in ``rts.pt``; its ``trained_on`` and ``holdout`` lists are merged with
            those of ``init``.
        progress: show a progress bar.
        init: an ``rts.pt`` of the same design, model and encoder to start from (fine-tuning;
            its file digest and metadata are recorded, ``config.selector_steps=0`` keeps its
            selector).

    Examples:
        ``TrainSettings(TrainConfig(steps=100), progress=False)``
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    loss: SaliencyLoss = field(default_factory=SaliencyLoss)
    meta: dict = field(default_factory=dict)
    progress: bool = True
    init: str | Path | None = None


def _atomic_save(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _augmentation(cfg: TrainConfig, size: tuple[int, int]) -> T.Compose:
    parts = [T.RandomResizedCrop(size, scale=(cfg.min_scale, 1.0), antialias=True),
             T.RandomHorizontalFlip()]
    if cfg.jitter:
        parts.append(T.ColorJitter(cfg.jitter, cfg.jitter, cfg.jitter, cfg.jitter / 10))
    return T.Compose(parts)


def _network(model: Classifier, encoder: Classifier | None,
             settings: TrainSettings) -> tuple[SaliencyNet, SaliencyNet | None]:
    """The network to train, seeded (``config.seed``), and the ``init`` network it starts from
    (None without one); ValueError when ``init`` is of the other design."""
    torch.manual_seed(settings.config.seed)
    net = SaliencyNet(model, encoder)
    if settings.init is None:
        return net, None
    start = load(model, settings.init, None if net.shared else net.encoder)
    if start.shared != net.shared:
        raise ValueError(f"{settings.init} is an RTS of the other design; cannot start from it")
    net.load_state_dict(start.state_dict())
    return net, start


def _optimisers(net: SaliencyNet, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Phase 1's (the gate's scalars at ``10 × lr``, the embeddings at ``selector_lr``) and
    phase 2's (the decoder at ``lr`` with weight decay)."""
    selector = net.selector_parameters()  # the two scalars, then the embeddings if trained
    return [torch.optim.Adam([{"params": selector[:2], "lr": 10 * cfg.lr},
                              {"params": selector[2:], "lr": cfg.selector_lr}]),
            torch.optim.Adam(net.decoder_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)]


def _identity(model: Classifier, net: SaliencyNet, settings: TrainSettings,
              start: SaliencyNet | None) -> dict:
    """What a resumed run must share with the run that wrote ``last.pt``: the settings (it may
    train for more steps, unless the area warm-up, a fraction of the steps, depends on their
    number), both networks' names and digests, and the ``init`` file."""
    cfg = settings.config
    resumable = {"checkpoint_every": None} | ({} if cfg.area_warmup else {"steps": None})
    identity = {"train": asdict(cfg) | resumable, "loss": asdict(settings.loss),
                "model": model.name, "model_digest": model_digest(model),
                "encoder": None if net.shared else net.encoder.name,
                "encoder_digest": None if net.shared else model_digest(net.encoder)}
    if start is not None:
        init = Path(settings.init)
        identity["init"] = {"file": init.name, "sha256": _file_digest(init)}
    return identity


class _Run:
    """One training run: the network, its optimisers, the generator, the images and the step.

    Phase 1 (the selector) runs ``selector_steps`` steps unless the design is shared, phase 2
    (the decoder) ``steps`` steps; ``step`` counts both.
    """

    def __init__(self, model: Classifier, net: SaliencyNet, settings: TrainSettings,
                 identity: dict, images: np.ndarray, labels: torch.Tensor) -> None:
        cfg = settings.config
        self.model, self.net, self.settings, self.identity = model, net, settings, identity
        self.phase1 = 0 if net.shared else cfg.selector_steps
        self.total = self.phase1 + cfg.steps
        self.opts = _optimisers(net, cfg)
        self.device = model.device  # training runs where the classifier is, with a generator there
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.step, self.before = 0, 0.0  # steps and training seconds of earlier runs
        self.started = time.time()
        self.augment = _augmentation(cfg, images.shape[1:3])
        self.x_all, self.labels = to_tensor(images).to(self.device), labels.to(self.device)
        self.n_classes = net.selector.shape[0]

    @property
    def first(self) -> bool:
        """Whether the current step is one of phase 1."""
        return self.step < self.phase1

    def seconds(self) -> float:
        """Training seconds so far, earlier runs included."""
        return self.before + time.time() - self.started

    def resume(self, last: Path) -> None:
        """Continue from ``last`` when it exists; ValueError when it was made with other
        settings."""
        if not last.is_file():
            return
        state = torch.load(last, map_location="cpu", weights_only=True)
        if json.loads(state["settings"]) != self.identity:
            raise ValueError(f"{last} was made with other settings; remove it or use another out")
        self.net.load_state_dict(state["net"])
        for opt, saved in zip(self.opts, state["optimizers"]):
            opt.load_state_dict(saved)
        self.gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"])
        self.step, self.before = int(state["step"]), float(state.get("seconds", 0.0))
        log.info("resuming %s at step %d", last, self.step)

    def save(self, last: Path) -> None:
        """Write the resumable state (network, optimisers, step, random state) to ``last``."""
        _atomic_save({"net": self.net.state_dict(),
                      "optimizers": [o.state_dict() for o in self.opts],
                      "step": self.step, "generator": self.gen.get_state(),
                      "torch_rng": torch.get_rng_state(), "settings": json.dumps(self.identity),
                      "seconds": self.seconds()}, last)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of the current phase: augmented images (N×3×H×W), the classes to explain
        (N,) and which of them are fake (N,) bool, a random other class."""
        cfg, first, draw = self.settings.config, self.first, {"generator": self.gen,
                                                              "device": self.device}
        size = cfg.selector_batch_size if first else cfg.batch_size
        idx = torch.randint(len(self.x_all), (size,), **draw)
        # per-image augmentation needs the indices on the host: one small sync per step
        x = torch.stack([self.augment(self.x_all[i]) for i in idx.tolist()])
        y = self.labels[idx]
        fake = torch.rand(size, **draw) < (cfg.selector_fake_prob if first else cfg.fake_prob)
        shift = torch.randint(1, self.n_classes, (size,), **draw)
        return x, torch.where(fake, (y + shift) % self.n_classes, y), fake

    def area_scale(self) -> float:
        """The area weight's factor at the current step of phase 2 (the warm-up)."""
        cfg = self.settings.config
        warm = cfg.area_warmup * cfg.steps
        return min(1.0, (self.step - self.phase1) / warm) if warm > 0 else 1.0

    def objective(self, x: torch.Tensor, classes: torch.Tensor,
                  fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The current phase's loss and what the progress line shows: phase 1 the "exists"
        cross entropy, phase 2 the saliency loss."""
        with torch.no_grad():  # the encoder is frozen
            feats, taps = self.net.encode(x)
        if self.first:
            exists = self.net.exists_logit(feats, classes)
            value = F.binary_cross_entropy_with_logits(exists, (~fake).to(feats))
            return value, {"exists_acc": (exists > 0) == ~fake}
        masks = torch.sigmoid(self.net.decode(feats, taps, classes))
        value, _ = self.settings.loss(self.model, x, masks, classes, ~fake, self.gen,
                                      self.area_scale())
        return value, {"area": masks}

    def advance(self, bar: tqdm) -> None:
        """One optimisation step of the current phase; every tenth updates the progress line."""
        first = self.first
        value, shown = self.objective(*self.batch())
        opt = self.opts[0 if first else 1]
        opt.zero_grad()
        value.backward()
        value = value.detach()
        opt.step()
        self.step += 1
        bar.update(1)
        if self.step % 10 == 0:  # the progress line reads two numbers from the device
            bar.set_postfix(phase=1 if first else 2, loss=f"{value.item():.3f}",
                            **{k: f"{v.float().mean().item():.2f}" for k, v in shown.items()})

    def run(self, last: Path) -> None:
        """Train to the last step, writing ``last`` every ``checkpoint_every`` steps and at the
        end; the network is left in eval mode."""
        every = self.settings.config.checkpoint_every
        bar = tqdm(total=self.total, initial=self.step, desc="train-rts", unit="step",
                   disable=not self.settings.progress)
        self.net.train()
        self.started = time.time()
        while self.step < self.total:
            self.advance(bar)
            if self.step % every == 0 or self.step == self.total:
                self.save(last)
        bar.close()
        self.net.eval()


def _seen_by_start(meta: dict, start: SaliencyNet, init: str | Path) -> dict:
    """``meta`` with the images ``start`` was trained on added to ``trained_on`` and removed
    from ``holdout`` (what the start saw is seen, never held out)."""
    seen = set(start.meta.get("trained_on", ()))
    meta = meta | {"trained_on": sorted(set(meta.get("trained_on", ())) | seen)}
    if "holdout" in meta:
        held = [k for k in meta["holdout"] if k not in seen]
        if len(held) < len(meta["holdout"]):
            log.warning("%d of the %d held-out images were trained on by %s: %d stay held "
                        "out", len(meta["holdout"]) - len(held), len(meta["holdout"]),
                        init, len(held))
        meta["holdout"] = held
    return meta


def _final_meta(run: _Run, start: SaliencyNet | None) -> dict:
    """The metadata of ``rts.pt``: the caller's, the run's identity with the full training
    settings, the seconds, and what the start's metadata holds besides its image lists."""
    settings = run.settings
    meta = dict(settings.meta)
    if start is not None:
        meta = _seen_by_start(meta, start, settings.init)
    return (meta | run.identity | {"train": asdict(settings.config)}
            | {"seconds": round(run.seconds(), 1)}
            | ({"init_meta": {k: v for k, v in start.meta.items()
                              if k not in ("trained_on", "holdout")}} if start else {}))


def train(model: Classifier, images: np.ndarray, labels: torch.Tensor, out: str | Path,
          settings: TrainSettings | None = None,
          encoder: Classifier | None = None) -> SaliencyNet:
    """Train a :class:`SaliencyNet` explaining ``model``, on the stages of ``encoder`` (None:
    the shared design, see :mod:`adv2.rts.network`).

    Phase 1 (``config.selector_steps``, with an encoder of its own) trains the selector, phase
    2 (``config.steps``) the decoder; both networks stay frozen. Writes ``out/last.pt``
    (resumable: network, optimisers, step, random state) every ``config.checkpoint_every``
    steps and ``out/rts.pt`` (the network and ``meta``, bound to both networks' weights) at the
    end; a ``last.pt`` made with the same settings is resumed.

    Arguments:
        model: the classifier to explain.
        images: uint8 training images.
        labels: their classes.
        out: the folder of ``last.pt`` and ``rts.pt``.
        settings: how to train (None: the defaults of :class:`TrainSettings`).
        encoder: the network whose stages feed the decoder and selector, or None.

    Shape:
        images: N×H×W×3; labels: (N,).

    Returns:
        The trained network, in eval mode.

    Examples:
        ``train(model, images, labels, "rts", TrainSettings(TrainConfig(steps=100)))``
    """
    settings = settings or TrainSettings()
    out = Path(out)
    net, start = _network(model, encoder, settings)  # an init is checked before any writing
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(model, net, settings, _identity(model, net, settings, start), images, labels)
    run.resume(out / "last.pt")
    run.run(out / "last.pt")
    _atomic_save({"net": net.state_dict(), "meta": json.dumps(_final_meta(run, start))},
                 out / "rts.pt")
    return net


def load(model: Classifier, path: str | Path, encoder: Classifier | None = None) -> SaliencyNet:
    """A trained :class:`SaliencyNet` for ``model`` from ``rts.pt`` (``weights_only`` load).

    Its encoder is ``encoder`` when given, else the built-in model the checkpoint names, built on
    the model's device. ModelError when the checkpoint was trained for another model or other
    weights of the model or of the encoder.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(state["meta"])
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ModelError(f"cannot read RTS checkpoint {path}: {type(exc).__name__}: {exc}"
                         ) from exc
    if meta.get("model") != model.name:
        raise ModelError(f"RTS checkpoint {path} was trained for model {meta.get('model')!r}, "
                         f"not {model.name!r}; train one with 'adv2 train-rts'")
    if meta.get("model_digest") != model_digest(model):
        raise ModelError(f"RTS checkpoint {path} was trained for other {model.name} weights; "
                         "train one for these weights with 'adv2 train-rts'")
    name = meta.get("encoder")
    if name is None:
        encoder = None  # the shared design
    else:
        encoder = encoder or load_model(name, device=model.device)
        if encoder.name != name or meta.get("encoder_digest") != model_digest(encoder):
            raise ModelError(f"RTS checkpoint {path} was trained on the encoder {name!r} with "
                             f"other weights than those of {encoder.name!r} given")
    net = SaliencyNet(model, encoder)
    load_weights(net, state["net"], str(path))
    net.meta = meta
    return net.eval()
