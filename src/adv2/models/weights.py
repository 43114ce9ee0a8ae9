"""Weight files: reading ``.pth``/``.pt``/``.safetensors`` state dicts safely, loading them
strictly with the mismatches named, and the digest that binds a checkpoint to exact weights."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adv2.models.errors import ModelError


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pth``/``.pt`` (with ``weights_only=True``) or ``.safetensors`` state dict whose
    floating tensors are all finite."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"weights file {path} is a directory")
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelError(f"weights file {path} is empty")
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} does not hold a state dict")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"weights file {path} does not hold a state dict of tensors "
                             f"(entry {key!r} is {type(value).__name__}, not a tensor)")
    _check_finite(state, path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _read_torch(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with torch's errors turned into ModelErrors."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    # torch.save writes a zip archive, or (legacy) a pickle that starts with its protocol byte
    archive_or_pickle = magic == b"PK\x03\x04" or magic[:1] == b"\x80"
    if not archive_or_pickle:
        raise ModelError(f"weights file {path} is not a PyTorch checkpoint (neither a "
                         "torch.save archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    except pickle.UnpicklingError as exc:
        # a zip archive (torch.save) or a pickle (legacy torch.save): the safe loader refused it
        refused = "Weights only load failed" in str(exc)
        if refused:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" (e.g. {found.group(1)})" if found else ""
            raise ModelError(
                f"weights file {path} holds Python objects other than tensors{what}; it was "
                "refused for safety (adv2 loads checkpoints with weights_only=True)"
            ) from None
        raise ModelError(f"weights file {path} is not a PyTorch checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - torch reports damaged files with many types
        detail = str(exc).split(". ")[0] or type(exc).__name__
        raise ModelError(f"weights file {path} is not a readable PyTorch checkpoint "
                         f"(truncated or damaged: {detail})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file(path)`` with its errors turned into ModelErrors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    except SafetensorError as exc:
        raise ModelError(f"weights file {path} is not a readable safetensors file "
                         f"(truncated or damaged: {exc})") from None


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise a ModelError naming ``path`` when a floating tensor holds NaN or ±Inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        count = sum(int((~torch.isfinite(state[k])).sum()) for k in bad)
        raise ModelError(f"weights file {path}: {count} non-finite values (first in {bad[0]!r})")


def mismatches(net: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps torch's strict load of ``state`` into ``net`` from succeeding: missing,
    unexpected and mis-shaped keys, with examples (BatchNorm's ``num_batches_tracked`` may be
    absent: torch fills it in)."""
    own = net.state_dict()
    optional = {f"{name}.num_batches_tracked".lstrip(".") for name, m in net.named_modules()
                if getattr(m, "num_batches_tracked", None) is not None}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
    return parts


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` as torch's strict load does, naming missing/unexpected/
    mis-shaped keys on error (nothing is loaded then)."""
    problems = mismatches(net, state)
    if problems:
        raise ModelError(f"weights {source} do not match the architecture: " + "; ".join(problems))
    try:
        # a plain dict (no version metadata): BatchNorm fills in an absent num_batches_tracked
        net.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise ModelError(f"weights {source} do not fit the architecture: {exc}") from None


def model_digest(model: nn.Module) -> str:
    """SHA-256 of the classifier's parameters and buffers (names, shapes, float32 values): an
    RTS checkpoint explains only the exact weights it was trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
