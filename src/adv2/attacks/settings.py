"""An attack's settings as a user writes them (CLI options, experiment keys), the registry of
attacks by name (:data:`ATTACKS`), and the attack the settings build, with the per-attack and
per-interpreter defaults filled in.

Each registered attack is an :class:`AttackEntry`: its class, its display name, its defaults,
how resolved settings build it, and its other forms (under the black-box threat; adaptive, also
evading fitted detectors). :mod:`adv2.attacks.registry` enters the built-in ones (it imports
every attack, so that this module, which the attacks import, imports none). ADV²'s
defaults live with the interpreters (``Interpreter.attack_defaults``, with
``Interpreter.support_attack_defaults`` over them when the perturbation is confined to a
support), PGD's with PGD, so ``ADV2.for_interpreter(model, interpreter)`` in Python and ``adv2
attack`` on the command line run the same attack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any

from adv2.errors import SettingError

if TYPE_CHECKING:
    from adv2.attacks.result import Attack
    from adv2.interpreters import Interpreter
    from adv2.models import Classifier

#: the attack settings an experiment may set per attack (and per interpreter inside one)
ATTACK_KEYS = ("steps", "warm_steps", "lam", "optimizer", "lr", "lr_decay", "pred_loss",
               "map_loss", "patience", "random_start", "step_search", "lam_search", "threat",
               "answers", "queries", "surrogate", "stop_iou", "placement", "p_init")


@dataclass(frozen=True)
class AttackEntry:
    """One attack of :data:`ATTACKS`.

    Arguments:
        cls: the attack's class. display_name: how reports and figures name it (``ADV²``).
        defaults: ``defaults(interpreter, support)``, the values the attack's unset settings
            take against an interpreter (its class or an instance) with a support text
            (``full``, ``edges``, ...): keys of :class:`AttackSettings`.
        build: ``build(settings, model, interpreter)``, the attack that resolved
            :class:`AttackSettings` describe (ValueError for settings it cannot take).
        differentiates: whether it differentiates the interpreter's map, so that only a
            differentiable interpreter can be attacked (``adv2 run`` skips the others).
        black_box: the entry that builds it under the black-box threat (None: none).
        adaptive: the entry of its adaptive form, which wraps it and also evades the
            detectors fitted in the files of the ``adaptive`` setting (None: none).

    Examples:
        >>> ATTACKS["pgd"].display_name
        'PGD'
    """

    cls: type
    display_name: str
    defaults: Callable[[type[Interpreter] | Interpreter, str], Mapping[str, Any]]
    build: Callable[[AttackSettings, Classifier, Interpreter | None], Attack]
    differentiates: bool = False
    #: the same attack under the black-box threat (``threat="black-box"``: it sees only a
    #: query oracle, :mod:`adv2.blackbox`), an entry of its own; None: white-box only
    black_box: AttackEntry | None = None
    #: the attack wrapped to evade fitted detectors too (``adaptive``: their files), an entry
    #: of its own; None: no adaptive form
    adaptive: AttackEntry | None = None


#: the attacks by the names the CLI and experiment files use (``--attack adv2``); the built-in
#: ones are entered by :mod:`adv2.attacks.registry`
ATTACKS: dict[str, AttackEntry] = {}


#: who the attacker is: ``white-box`` (differentiates the model and the interpreter) or
#: ``black-box`` (sees only a query oracle's answers, :mod:`adv2.blackbox`)
THREATS = ("white-box", "black-box")


def attack_entry(name: str, threat: str = "white-box", adaptive: bool = False) -> AttackEntry:
    """The registered attack ``name`` under ``threat``, its adaptive form with ``adaptive``; a
    ValueError naming it and the known ones otherwise, a :class:`SettingError` (``threat``,
    ``adaptive``) for a form it lacks."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; the attacks are {', '.join(ATTACKS)}")
    if threat not in THREATS:
        raise SettingError("threat", f"unknown threat {threat!r}; choose from "
                                     f"{', '.join(THREATS)}")
    entry = ATTACKS[name]
    if threat == "black-box":
        entry = _form(entry, "black_box", "threat")
    return _form(entry, "adaptive", "adaptive") if adaptive else entry


def _form(entry: AttackEntry, form: str, key: str) -> AttackEntry:
    """``entry``'s other form ``form`` (an :class:`AttackEntry` field: ``black_box``,
    ``adaptive``); a SettingError under ``key`` naming the attacks that have one."""
    found = getattr(entry, form)
    if found is None:
        having = [n for n, e in ATTACKS.items() if getattr(e, form) is not None]
        raise SettingError(key, f"{entry.display_name} has no {form.replace('_', '-')} form; "
                                f"the attacks with one are {', '.join(having) or 'none'}")
    return found


class DisplayNames(Mapping[str, str]):
    """How reports name each registered attack (``pgd`` → ``PGD``): a live view of
    :data:`ATTACKS`' display names."""

    def __getitem__(self, name: str) -> str:
        return ATTACKS[name].display_name

    def __iter__(self) -> Iterator[str]:
        return iter(ATTACKS)

    def __len__(self) -> int:
        return len(ATTACKS)


#: each attack's display name by its name, from :data:`ATTACKS`
DISPLAY_NAMES: Mapping[str, str] = DisplayNames()


@dataclass(frozen=True)
class AttackSettings:
    """The settings of a registered attack (PGD, ADV², ...); ``None`` means its default.

    Arguments:
        attack: a name of :data:`ATTACKS` (``pgd``, ``adv2``). eps: the L∞ budget in [0,1]
        units. steps: PGD steps, or ADV²'s joint steps; warm_steps: ADV²'s PGD warm start. lam:
        λ schedule text (``5``, ``5:10``, ``1,2@0.5``; schedules are read at progress
        step/steps, 0 at the first step and (steps − 1)/steps at the last). optimizer:
        ``sign`` or ``adam``; lr: its step size; lr_decay: the step's factor at progress 1
        (linear from 1 at the first step). pred_loss: ``ce``, ``cw``, ``smooth``; map_loss:
        ``mse``, ``l1``, ``logit``. patience: stop an image after this many judgements
        without improvement (0: never; an interpreter judged every k steps, such as
        SmoothGrad's, counts k steps as one). random_start: PGD starts uniformly in the ball
        (ADV² starts from its PGD warm start and refuses it). step_search: ADV²'s per-example
        step-length search. lam_search:
        ADV²'s reruns of the joint stage with per-image λ (None or 0: none;
        :mod:`adv2.attacks.lam_search`). seed: PGD's random start and a black-box search's
        draws (each image's from its own seed, :mod:`adv2.attacks.draws`). threat:
        ``white-box`` or ``black-box`` (:data:`THREATS`); the black-box
        settings: answers (what the oracle answers, :data:`adv2.blackbox.ANSWERS`), queries
        (the budget per image), surrogate (model names joined by ``+``: the transfer attack on
        them starts the search, :func:`adv2.blackbox.build.transfer_start`; None: Square's
        random start), stop_iou (black-box ADV² stops an image that predicts its target with
        this IoU of the oracle's map to the target map), placement (where the search's squares
        go, :data:`adv2.blackbox.search.PLACEMENTS`), p_init (the fraction of the image the
        search's first square covers; the square shrinks from it on Square's schedule); under
        it ``lam`` is the weight of the map term and ``patience`` counts queries.
        adaptive: fitted detector files (``adv2 detect fit``; one, or several): the attack's
        adaptive form (:attr:`AttackEntry.adaptive`), which also evades every one.
        support: where the perturbation may live (:func:`adv2.attacks.support.parse`; the
        support itself is built per batch and passed to the attack's call): any but ``full``
        takes the interpreter's ``support_attack_defaults`` over its ``attack_defaults``.

    Examples:
        >>> AttackSettings(steps=50).resolved(cam).build(model, cam)  # doctest: +SKIP
    """

    attack: str = "adv2"
    eps: float = 8 / 255
    steps: int | None = None
    warm_steps: int | None = None
    lam: str | None = None
    optimizer: str | None = None
    lr: float | None = None
    lr_decay: float | None = None
    pred_loss: str | None = None
    map_loss: str | None = None
    patience: int | None = None
    random_start: bool = False
    step_search: bool | None = None
    lam_search: int | None = None
    seed: int = 0
    support: str = "full"
    threat: str = "white-box"
    answers: str = "scores+map"
    queries: int = 10_000
    surrogate: str | None = None
    stop_iou: float | None = None
    placement: str = "uniform"
    p_init: float | None = None
    adaptive: str | tuple[str, ...] | None = None

    def entry(self) -> AttackEntry:
        """This attack's entry under its threat, its adaptive form with ``adaptive``
        (:func:`attack_entry`)."""
        return attack_entry(self.attack, self.threat, self.adaptive is not None)

    def defaults(self, interpreter: type[Interpreter] | Interpreter) -> Mapping[str, Any]:
        """The values this attack's unset settings take for ``interpreter``: its entry's
        (:attr:`AttackEntry.defaults`; ADV²'s are the interpreter's ``attack_defaults``, then
        its ``support_attack_defaults`` with a support other than ``full``)."""
        return self.entry().defaults(interpreter, self.support)

    def resolved(self, interpreter: type[Interpreter] | Interpreter):
        """A copy with every ``None`` setting filled from :meth:`defaults`; a default whose key
        is not a setting is a :class:`SettingError` (``interpreter``) naming the interpreter,
        the attack and the key."""
        names = {f.name for f in fields(AttackSettings)}
        defaults = self.defaults(interpreter)
        unknown = sorted(set(defaults) - names)
        if unknown:
            owner = getattr(interpreter, "name", None) or getattr(interpreter, "__name__", "")
            raise SettingError("interpreter", f"{owner!r} with attack {self.attack!r}: unknown "
                                              f"attack setting(s) {', '.join(unknown)} in their "
                                              "defaults; the settings are "
                                              f"{', '.join(sorted(names - {'attack', 'support'}))}")
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return replace(self, **filled)

    def build(self, model: Classifier, interpreter: Interpreter | None) -> Attack:
        """The attack these (resolved) settings describe, built by its entry in
        :data:`ATTACKS`; an unknown attack is a ValueError naming it and the known ones."""
        return self.entry().build(self, model, interpreter)


#: the metadata of a dataclass field that is no recorded setting (an attack's model, its hooks,
#: a part its ``config()`` records under another key): :func:`recorded` leaves it out
NOT_RECORDED = {"recorded": False}


def describe(part: Any) -> Any:
    """A JSON-ready description of an attack's component (loss, optimiser, schedule, ...):
    its class name and settings, for the configuration an attack records; a part with a
    ``config()`` (an interpreter, a guard, an attack) describes itself by it."""
    if part is None or isinstance(part, (bool, int, float, str)):
        return part
    if isinstance(part, (tuple, list)):
        return [describe(p) for p in part]
    if callable(getattr(part, "config", None)):
        return part.config()
    if is_dataclass(part):
        return {"name": type(part).__name__, **recorded(part)}
    settings = {k: describe(v) for k, v in vars(part).items()
                if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple))}
    return {"name": type(part).__name__, **settings}


def recorded(part: Any) -> dict[str, Any]:
    """The settings of a dataclass as its record holds them: each field's :func:`describe`,
    in field order, but those whose metadata is :data:`NOT_RECORDED`.

    Examples:
        >>> {"attack": "pgd", **recorded(PGD(model))}  # PGD.config()  # doctest: +SKIP
    """
    return {f.name: describe(getattr(part, f.name)) for f in fields(part)
            if f.metadata.get("recorded", True)}
