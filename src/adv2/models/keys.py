"""Key names of checkpoints written by other code bases, renamed to those of the networks adv2
builds: lukemelas' EfficientNet-PyTorch to timm, old torchvision DenseNet to today's."""

from __future__ import annotations

import re

import torch

_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                  "_bn1": "bn2", "_fc": "classifier"}
#: block parts of a depthwise-separable block (no expansion) and of an inverted residual
_LUKEMELAS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                 "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}


def is_lukemelas(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses the key names of lukemelas' EfficientNet-PyTorch."""
    return any(k.startswith("_blocks.") for k in state)


def lukemelas_blocks(state: dict[str, torch.Tensor]) -> int:
    """How many blocks lukemelas-style ``state`` holds."""
    return len({k.split(".")[1] for k in state if k.startswith("_blocks.")})


def lukemelas_to_timm(state: dict[str, torch.Tensor],
                       stages: list[int]) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet keys to those of a timm EfficientNet whose stages hold
    ``stages`` blocks (``[len(s) for s in net.blocks]``); keys without a counterpart stay."""
    position = [(s, i) for s, n in enumerate(stages) for i in range(n)]
    expanded = {k.split(".")[1] for k in state
                if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            block, _, rest = rest.partition(".")
            part, _, rest = rest.partition(".")
            table = _LUKEMELAS_IR if block in expanded else _LUKEMELAS_DS
            if block.isdigit() and int(block) < len(position) and part in table:
                stage, idx = position[int(block)]
                key = f"blocks.{stage}.{idx}.{table[part]}.{rest}"
        elif head in _LUKEMELAS_TOP:
            key = f"{_LUKEMELAS_TOP[head]}.{rest}"
        out[key] = value
    return out


def densenet_new_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old torchvision DenseNet keys (``denselayerN.norm.1.weight``) to today's
    (``denselayerN.norm1.weight``), as torchvision's own loader does."""
    old = re.compile(r"(\.denselayer\d+\.(?:norm|relu|conv))\.([12])\.")
    return {old.sub(r"\1\2.", k): v for k, v in state.items()}
