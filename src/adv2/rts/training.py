"""Training the saliency network with the original saliency loss (Dabkowski & Gal 2017).

For an image x (N×3×H×W in [0,1]) and a mask m (upsampled to H×W), the *preserved* image keeps
the masked region, ``m·x + (1−m)·r``, and the *destroyed* image removes it, ``(1−m)·x + m·r``,
where r is, per image with probability 1/2, x blurred (Gaussian σ = 11) or a random
colour plus Gaussian noise. The loss, with the original weights, is

    destroyer CW margin (non-targeted, confidence 5) on the destroyed image
    + 0.3 · preserver CW margin (targeted, confidence 1) on the preserved image
    + 8 · mean((m + 5e-4)^0.3)                      (area)
    + 0.005 · TV²(m) with a border penalty of 0.3   (smoothness, on the 1/4-resolution mask)

For "fake" labels (a random other class, probability 0.3) only the area and smoothness terms
apply, which teaches the decoder to return an empty mask for a class absent from the image.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from tqdm import tqdm

from adv2.data import to_tensor
from adv2.filters import blur
from adv2.metrics import margin
from adv2.records import atomic_write
from adv2.models import Classifier, ModelError, load_model, load_weights, model_digest
from adv2.rts.network import SaliencyNet

log = logging.getLogger(__name__)


@dataclass
class SaliencyLoss:
    """The original saliency loss weights (see the module docstring)."""

    area_weight: float = 8.0
    area_power: float = 0.3
    smooth_weight: float = 0.005
    border_penalty: float = 0.3
    preserver_weight: float = 0.3
    destroyer_confidence: float = 5.0
    preserver_confidence: float = 1.0
    blur_sigma: float = 11.0
    noise_std: float = 0.055  # the original's N(0, 0.11) on [−1,1] images
    colour_range: float = 0.33  # the original's U(−0.66, 0.66) on [−1,1] images
    preserved_noise_std: float = 0.015  # the original's N(0, 0.03) on [−1,1] images

    def replacement(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Per image: x blurred, or a random colour plus noise (probability 1/2 each)."""
        n = x.shape[0]
        blurred = blur(x, self.blur_sigma)
        draw = {"generator": gen, "device": gen.device}
        colour = 0.5 + self.colour_range * (2 * torch.rand(n, 3, 1, 1, **draw) - 1)
        noisy = colour + self.noise_std * torch.randn(x.shape, **draw)
        use_blur = (torch.rand(n, 1, 1, 1, **draw) < 0.5).to(x)
        return (use_blur * blurred + (1 - use_blur) * noisy).clamp(0, 1)

    def smoothness(self, m: torch.Tensor) -> torch.Tensor:
        """(N,) squared total variation plus the border penalty, summed over cells, halved."""
        tv = ((m[:, :, 1:] - m[:, :, :-1]) ** 2).sum(dim=(1, 2, 3))
        tv = tv + ((m[..., 1:] - m[..., :-1]) ** 2).sum(dim=(1, 2, 3))
        border = (m[:, :, 0] ** 2 + m[:, :, -1] ** 2).sum(dim=(1, 2))
        border = border + (m[..., 0] ** 2 + m[..., -1] ** 2).sum(dim=(1, 2))
        return (tv + self.border_penalty * border) / 2

    def __call__(self, model: Classifier, x: torch.Tensor, masks: torch.Tensor,
                 classes: torch.Tensor, real: torch.Tensor, gen: torch.Generator,
                 area_scale: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the batch and its parts. masks N×1×h×w in [0,1]; real (N,) bool;
        ``area_scale`` multiplies the area weight (warm-up)."""
        up = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        other = self.replacement(x, gen)
        preserved = up * x + (1 - up) * other
        preserved = preserved + self.preserved_noise_std * torch.randn(
            x.shape, generator=gen, device=gen.device)
        destroyed = (1 - up) * x + up * other
        logits = model(torch.cat([preserved.clamp(0, 1), destroyed]))
        keep, remove = logits.chunk(2)
        destroyer = margin(remove, classes).clamp(min=-self.destroyer_confidence)
        preserver = (-margin(keep, classes)).clamp(min=-self.preserver_confidence)
        area = ((up + 5e-4) ** self.area_power).mean(dim=(1, 2, 3))
        smooth = self.smoothness(masks)
        realf = real.to(x)
        terms = {
            "destroyer": (realf * destroyer).mean(),
            "preserver": self.preserver_weight * (realf * preserver).mean(),
            "area": area_scale * self.area_weight * area.mean(),
            "smoothness": self.smooth_weight * smooth.mean(),
        }
        return sum(terms.values()), {k: float(v.detach()) for k, v in terms.items()}


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


def train(
    model: Classifier,
    images: np.ndarray,
    labels: torch.Tensor,
    out: str | Path,
    cfg: TrainConfig | None = None,
    loss: SaliencyLoss | None = None,
    meta: dict | None = None,
    progress: bool = True,
    encoder: Classifier | None = None,
    init: str | Path | None = None,
) -> SaliencyNet:
    """Train a :class:`SaliencyNet` explaining ``model`` on uint8 images (N×H×W×3) with labels
    (N,), on the stages of ``encoder`` (None: the shared design, see :mod:`adv2.rts.network`).

    Phase 1 (``cfg.selector_steps``, with an encoder of its own) trains the selector, phase 2
    (``cfg.steps``) the decoder; both networks stay frozen. Writes ``out/last.pt`` (resumable:
    network, optimisers, step, random state) every ``cfg.checkpoint_every`` steps and
    ``out/rts.pt`` (the network and ``meta``, bound to both networks' weights) at the end; a
    ``last.pt`` made with the same settings is resumed. ``init``: an ``rts.pt`` of the same
    design, model and encoder to start from (fine-tuning; its file digest and metadata are
    recorded, ``selector_steps=0`` keeps its selector). Returns the network in eval mode.
    """
    cfg = cfg or TrainConfig()
    loss = loss or SaliencyLoss()
    out = Path(out)
    torch.manual_seed(cfg.seed)
    net = SaliencyNet(model, encoder)
    start = None
    if init is not None:  # checked before anything is written
        start = load(model, init, None if net.shared else net.encoder)
        if start.shared != net.shared:
            raise ValueError(f"{init} is an RTS of the other design; cannot start from it")
        net.load_state_dict(start.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    phase1 = 0 if net.shared else cfg.selector_steps
    selector = net.selector_parameters()  # the two scalars, then the embeddings if trained
    opts = [torch.optim.Adam([{"params": selector[:2], "lr": 10 * cfg.lr},
                              {"params": selector[2:], "lr": cfg.selector_lr}]),
            torch.optim.Adam(net.decoder_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)]
    device = model.device  # training runs where the classifier is, with a generator there
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    # what a resumed run must share: it may train for more steps, unless the area warm-up
    # (a fraction of the steps) depends on their number
    resumable = {"checkpoint_every": None} | ({} if cfg.area_warmup else {"steps": None})
    settings = {"train": asdict(cfg) | resumable, "loss": asdict(loss), "model": model.name,
                "model_digest": model_digest(model),
                "encoder": None if net.shared else net.encoder.name,
                "encoder_digest": None if net.shared else model_digest(net.encoder)}
    if start is not None:
        settings["init"] = {"file": Path(init).name, "sha256": _file_digest(Path(init))}
    step, before = 0, 0.0  # steps and training seconds of earlier runs
    last = out / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        if json.loads(state["settings"]) != settings:
            raise ValueError(f"{last} was made with other settings; remove it or use another out")
        net.load_state_dict(state["net"])
        for opt, saved in zip(opts, state["optimizers"]):
            opt.load_state_dict(saved)
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"])
        step, before = int(state["step"]), float(state.get("seconds", 0.0))
        log.info("resuming %s at step %d", last, step)
    augment = _augmentation(cfg, images.shape[1:3])
    x_all, labels = to_tensor(images).to(device), labels.to(device)
    n_classes = net.selector.shape[0]
    total = phase1 + cfg.steps
    bar = tqdm(total=total, initial=step, desc="train-rts", unit="step", disable=not progress)
    net.train()
    started = time.time()
    while step < total:
        first = step < phase1
        batch = cfg.selector_batch_size if first else cfg.batch_size
        idx = torch.randint(len(x_all), (batch,), generator=gen, device=device)
        # per-image augmentation needs the indices on the host: one small sync per step
        x = torch.stack([augment(x_all[i]) for i in idx.tolist()])
        y = labels[idx]
        fake = torch.rand(batch, generator=gen, device=device) < (
            cfg.selector_fake_prob if first else cfg.fake_prob)
        shift = torch.randint(1, n_classes, (batch,), generator=gen, device=device)
        classes = torch.where(fake, (y + shift) % n_classes, y)
        with torch.no_grad():  # the encoder is frozen
            feats, taps = net.encode(x)
        if first:
            exists = net.exists_logit(feats, classes)
            value = F.binary_cross_entropy_with_logits(exists, (~fake).to(feats))
            shown = {"exists_acc": (exists > 0) == ~fake}
        else:
            masks = torch.sigmoid(net.decode(feats, taps, classes))
            done = step - phase1
            warm = cfg.area_warmup * cfg.steps
            value, _ = loss(model, x, masks, classes, ~fake, gen,
                            min(1.0, done / warm) if warm > 0 else 1.0)
            shown = {"area": masks}
        opt = opts[0 if first else 1]
        opt.zero_grad()
        value.backward()
        value = value.detach()
        opt.step()
        step += 1
        bar.update(1)
        if step % 10 == 0:  # the progress line reads two numbers from the device
            bar.set_postfix(phase=1 if first else 2, loss=f"{value.item():.3f}",
                            **{k: f"{v.float().mean().item():.2f}" for k, v in shown.items()})
        if step % cfg.checkpoint_every == 0 or step == total:
            _atomic_save({"net": net.state_dict(), "optimizers": [o.state_dict() for o in opts],
                          "step": step, "generator": gen.get_state(),
                          "torch_rng": torch.get_rng_state(), "settings": json.dumps(settings),
                          "seconds": before + time.time() - started}, last)
    bar.close()
    net.eval()
    meta = dict(meta or {})
    if start is not None:  # what the start saw is seen, never held out
        seen = set(start.meta.get("trained_on", ()))
        meta["trained_on"] = sorted(set(meta.get("trained_on", ())) | seen)
        if "holdout" in meta:
            held = [k for k in meta["holdout"] if k not in seen]
            if len(held) < len(meta["holdout"]):
                log.warning("%d of the %d held-out images were trained on by %s: %d stay held "
                            "out", len(meta["holdout"]) - len(held), len(meta["holdout"]),
                            init, len(held))
            meta["holdout"] = held
    info = (meta | settings | {"train": asdict(cfg)}
            | {"seconds": round(before + time.time() - started, 1)}
            | ({"init_meta": {k: v for k, v in start.meta.items()
                              if k not in ("trained_on", "holdout")}} if start else {}))
    _atomic_save({"net": net.state_dict(), "meta": json.dumps(info)}, out / "rts.pt")
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
