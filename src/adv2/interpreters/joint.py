"""Several interpreters as one: the interpreter ``cam+grad`` (any registered names joined by
``+``), whose map objective covers every member at once.

A joint map is each member's map flattened and concatenated: N×1×1×L with L = Σ h_i·w_i
(:meth:`Joint.parts` splits it back into the members' N×1×h_i×w_i maps). Every member is
explained, attacked and verified by itself; the joint interpreter only combines:

- the attack's map loss is Σ_i s_lead · ℓ_i / s_i, each member's loss ℓ_i (the run's map loss
  on its own map) divided by its value s_i at the first iterate of the descent (the warm
  start; at least :data:`RELATIVE_FLOOR` times the lead's), per image, and multiplied by the lead's s_lead: every member starts with the lead's
  weight, whatever the scale of its map loss, and the lead's term is its own attack's, for
  which its λ was tuned. The lead is the member whose ADV² defaults take the most steps (``steps +
  warm_steps``; the first such member in the spelling), and the joint attack takes its
  defaults (``cam+grad``: GRAD's);
- an iterate is judged by every member's :meth:`~Interpreter.explain_loss` (its true maps)
  with the same normalisation, on the verification schedule of its most often verified member
  (none when no member needs one);
- reports give each member's L1 and IoU (:func:`adv2.attacks.result.distances`); the joint's
  ``l1`` and ``iou`` are their means over the members.

Examples:
    >>> joint = build_interpreter("cam+grad", model)  # doctest: +SKIP
    >>> logits, maps = joint.explain(x, classes)       # maps: N×1×1×(7·7 + 56·56)
    >>> joint.parts(maps, (224, 224))["grad"].shape    # doctest: +SKIP
    torch.Size([N, 1, 56, 56])
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable, Sequence

import torch

from adv2.interpreters.base import Interpreter, Verification
from adv2.interpreters.plugins import build_interpreter, resolve, setting_names
from adv2.models import Classifier

#: the smallest start loss a member is divided by (a member already at its target map)
FLOOR = 1e-8
#: ... and, relative to the lead member's, the smallest a member's start loss counts as
#: (a member at or near its target, or one whose estimator starts below 0, would else swamp
#: the others)
RELATIVE_FLOOR = 1e-3


def members_of(spelling: str) -> tuple[str, ...]:
    """The member names of a joint spelling (``cam+grad`` → ``("cam", "grad")``); a
    ValueError for an empty or repeated member."""
    names = tuple(spelling.split("+"))
    if any(not n for n in names):
        raise ValueError(f"interpreter {spelling!r}: an empty member; join names with '+', "
                         "e.g. cam+grad")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"interpreter {spelling!r}: {', '.join(repeated)} given twice")
    return names


def lead_of(classes: dict[str, type[Interpreter]]) -> str:
    """The member whose ADV² defaults the joint attack takes: the one whose defaults take the
    most steps (``steps + warm_steps``), the first in the spelling among equals."""
    def steps(name: str) -> int:
        d = classes[name].attack_defaults
        return int(d.get("steps") or 0) + int(d.get("warm_steps") or 0)

    return max(classes, key=steps)


@cache
def joint_class(spelling: str) -> type[Joint]:
    """The interpreter class of ``spelling`` (``cam+grad``): a :class:`Joint` whose members are
    those names (each resolved by :func:`~adv2.interpreters.plugins.resolve`; a ValueError
    naming an unknown one) and whose ADV² defaults are its lead's (:func:`lead_of`)."""
    names = members_of(spelling)
    if len(names) < 2:
        raise ValueError(f"interpreter {spelling!r}: a joint interpreter needs two members or "
                         "more")
    classes = {n: resolve(n) for n in names}
    lead_name = lead_of(classes)
    lead = classes[lead_name]
    return type(f"Joint[{spelling}]", (Joint,), {
        "name": spelling, "member_names": names, "lead": lead_name,
        "attack_defaults": dict(lead.attack_defaults),
        "support_attack_defaults": dict(lead.support_attack_defaults),
        "blackbox_attack_defaults": dict(lead.blackbox_attack_defaults),
        "adaptive_lam_scale": lead.adaptive_lam_scale,
        "differentiable": all(c.differentiable for c in classes.values()),
        "stochastic": any(c.stochastic for c in classes.values())})


class StartScales:
    """Each image's and member's loss at the first call of a descent: what
    :meth:`normalise` divides by.

    Shape:
        losses: n×M (M members) for the batch rows ``rows`` (n,).

    Returns:
        ``normalise(losses, rows)``: (n,) Σ_i s_lead · ℓ_i / s_i.
    """

    def __init__(self, lead: int) -> None:
        self.lead = lead
        self.values: torch.Tensor | None = None

    def reset(self, n: int, members: int, like: torch.Tensor) -> None:
        """Forget the scales: ``n`` images, ``members`` members, on ``like``'s device."""
        self.values = torch.full((n, members), float("nan"), device=like.device)

    def normalise(self, losses: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.values is None:  # outside a descent: the first call's rows start it
            self.reset(int(rows.max()) + 1, losses.shape[1], losses)
        known = self.values[rows]
        start = losses.detach()
        floor = (start[:, self.lead:self.lead + 1].abs() * RELATIVE_FLOOR).clamp_min(FLOOR)
        known = torch.where(known.isnan(), torch.maximum(start, floor), known)
        self.values[rows] = known
        return known[:, self.lead] * (losses / known).sum(dim=1)


class Joint(Interpreter):
    """Several interpreters attacked and judged as one (see the module docstring); build it by
    its spelling, ``build_interpreter("cam+grad", model)``.

    Arguments:
        model: the classifier every member explains.
        settings: member settings; ``grad.pool=8`` goes to that member, a plain ``pool=8`` to
            every member that takes it (a ValueError when none does).

    Shape:
        x: float N×3×H×W in [0,1]; classes: (N,) long; maps N×1×1×L, L = Σ h_i·w_i.

    Returns:
        ``joint(x, classes)``: the members' maps flattened and concatenated in spelling order.
    """

    #: the members' names, in spelling order (set by :func:`joint_class`)
    member_names: tuple[str, ...] = ()
    #: the name of the member whose ADV² defaults the joint attack takes
    lead: str = ""

    def __init__(self, model: Classifier, **settings: Any) -> None:
        super().__init__(model)
        routed: dict[str, dict[str, Any]] = {n: {} for n in self.member_names}
        for key, value in settings.items():
            member, dot, option = key.rpartition(".")
            if dot and member not in routed:
                raise ValueError(f"interpreter {self.name!r}: setting {key!r} names "
                                 f"{member!r}, which is not a member ({', '.join(routed)})")
            takers = [member] if dot else [
                n for n in routed if (names := setting_names(resolve(n))) is None
                or key in names]
            if not takers:
                raise ValueError(f"interpreter {self.name!r}: no member takes setting {key!r}")
            for name in takers:
                routed[name][option] = value
        self.members = [build_interpreter(n, model, **routed[n]) for n in self.member_names]
        self.stochastic = any(m.stochastic for m in self.members)  # IG's is per instance
        self.passes_per_step = sum(m.passes_per_step for m in self.members)
        self.explain_passes = sum(m.explain_passes for m in self.members)
        self.fitted_on = frozenset().union(*(m.fitted_on for m in self.members))
        lead = self.member_names.index(self.lead)
        self.attack_scales = StartScales(lead)
        # with a verification, iterates are judged only by explain_loss: its own start values;
        # without one, the attack's values are the true ones and judge every step: the same
        verified = any(m.verification() is not None for m in self.members)
        self.judge_scales = StartScales(lead) if verified else self.attack_scales
        self.size: tuple[int, int] | None = None  # the attacked images' (H, W)
        self._resolutions: dict[tuple[int, int], list[tuple[int, int]]] = {}

    # ------------------------------------------------------------------ maps and their parts
    def member_resolutions(self, height: int, width: int) -> list[tuple[int, int]]:
        """Each member's native map size for an input of (height, width)."""
        key = (height, width)
        if key not in self._resolutions:
            self._resolutions[key] = [tuple(m.resolution(height, width)) for m in self.members]
        return self._resolutions[key]

    def resolution(self, height: int, width: int) -> tuple[int, int]:
        return 1, sum(h * w for h, w in self.member_resolutions(height, width))

    def parts(self, maps: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Each member's N×1×h_i×w_i maps from joint maps N×1×1×L of inputs of ``size``."""
        shapes = self.member_resolutions(*size)
        pieces = maps.flatten(1).split([h * w for h, w in shapes], dim=1)
        return {n: p.reshape(len(maps), 1, h, w)
                for n, p, (h, w) in zip(self.member_names, pieces, shapes)}

    def join(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Joint maps N×1×1×L from the members' maps by name (the inverse of :meth:`parts`)."""
        flat = torch.cat([parts[n].flatten(1) for n in self.member_names], dim=1)
        return flat.view(len(flat), 1, 1, -1)

    def use_seeds(self, seeds: Sequence[int] | None) -> None:
        """Seed every member's draws too (:meth:`Interpreter.use_seeds`)."""
        super().use_seeds(seeds)
        for member in self.members:
            member.use_seeds(seeds)

    # ------------------------------------------------------------------ the interface
    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.explain_rows(x, classes, None)

    def explain_rows(self, x: torch.Tensor, classes: torch.Tensor,
                     rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [m.explain_rows(x, classes, rows) for m in self.members]
        return outputs[0][0], self.join({n: maps for n, (_, maps)
                                         in zip(self.member_names, outputs)})

    def start_attack(self, x: torch.Tensor, classes: torch.Tensor,
                     clean: torch.Tensor | None = None) -> int:
        self.size = tuple(x.shape[-2:])
        for scales in (self.attack_scales, self.judge_scales):
            scales.reset(len(x), len(self.members), x)
        return sum(m.start_attack(x, classes, clean) for m in self.members)

    def attack_forward(self, x: torch.Tensor, classes: torch.Tensor, progress: float,
                       rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [m.attack_forward(x, classes, progress, rows) for m in self.members]
        return outputs[0][0], self.join({n: maps for n, (_, maps)
                                         in zip(self.member_names, outputs)})

    def attack_loss(
        self, x: torch.Tensor, classes: torch.Tensor, target_maps: torch.Tensor,
        map_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], progress: float,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first member's logits and Σ_i s_lead·ℓ_i/s_i over each member's own
        :meth:`~Interpreter.attack_loss` ℓ_i (the module docstring)."""
        rows = torch.arange(len(x), device=x.device) if rows is None else rows
        targets = self.parts(target_maps, tuple(x.shape[-2:]))
        outputs = [m.attack_loss(x, classes, targets[n], map_loss, progress, rows)
                   for n, m in zip(self.member_names, self.members)]
        losses = torch.stack([loss for _, loss in outputs], dim=1)
        return outputs[0][0], self.attack_scales.normalise(losses, rows)

    def explain_loss(
        self, x: torch.Tensor, classes: torch.Tensor, target_maps: torch.Tensor,
        map_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every member's own :meth:`~Interpreter.explain_loss`, its losses normalised as the
        attack's are (by their first judged values)."""
        rows = torch.arange(len(x), device=x.device) if rows is None else rows
        targets = self.parts(target_maps, tuple(x.shape[-2:]))
        outputs = [m.explain_loss(x, classes, targets[n], map_loss, rows)
                   for n, m in zip(self.member_names, self.members)]
        losses = torch.stack([loss for _, _, loss in outputs], dim=1)
        maps = self.join({n: out[1] for n, out in zip(self.member_names, outputs)})
        return outputs[0][0], maps, self.judge_scales.normalise(losses, rows)

    def verification(self) -> Verification | None:
        """None when no member needs one; else verified every ``every`` steps of the most
        often verified member, on renewed success when any member asks for it, each member's
        ``after`` told its own maps."""
        policies = {n: p for n, m in zip(self.member_names, self.members)
                    if (p := m.verification()) is not None}
        if not policies:
            return None

        def after(rows: torch.Tensor, maps: torch.Tensor) -> None:
            parts = self.parts(maps, self.size)
            for name, policy in policies.items():
                if policy.after is not None:
                    policy.after(rows, parts[name])

        return Verification(min(p.every for p in policies.values()),
                            any(p.on_success for p in policies.values()), after)

    def config(self) -> dict:
        return {"name": self.name, "lead": self.lead,
                "normalisation": "each member's loss / its start value × the lead's",
                "members": [m.config() for m in self.members]}
