"""Interpreters by name: a built-in (:data:`adv2.interpreters.INTERPRETERS`), any class of a
user's (``package.module:ClassName``, a subclass of :class:`~adv2.interpreters.Interpreter`),
a Captum attribution (``captum:<Name>``, :mod:`adv2.interpreters.captum_adapter`) or several of
these joined by ``+`` (``cam+grad``: one joint interpreter, :mod:`adv2.interpreters.joint`).

Every place that takes an interpreter's name (``adv2 attack --interpreter``, an experiment
file's ``interpreters``, :func:`adv2.interpreters.build_interpreter`) resolves it here; a name
that does not resolve raises a ValueError naming it and the problem (docs/interpreters-custom.md).

Examples:
    >>> resolve("cam").__name__
    'CAM'
    >>> resolve("adv2.interpreters.grad:GRAD").name
    'grad'
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from adv2.interpreters.base import Interpreter
from adv2.interpreters.option_types import check_options
from adv2.models import Classifier


#: how a name with a separator becomes one class: ``+`` joins interpreters into one
#: (:func:`adv2.interpreters.joint.joint_class`, entered by :mod:`adv2.interpreters`)
COMPOSITIONS: dict[str, Callable[[str], type[Interpreter]]] = {}


def builtins() -> dict[str, type[Interpreter]]:
    """The built-in interpreters by name (:data:`adv2.interpreters.INTERPRETERS`)."""
    from adv2.interpreters import INTERPRETERS

    return INTERPRETERS


def forms() -> str:
    """The names an interpreter may be given by, as help and error text."""
    return (f"a built-in ({', '.join(sorted(builtins()))}), package.module:ClassName (a "
            "subclass of adv2.interpreters.Interpreter), captum:<AttributionName>, or several "
            "joined by + (cam+grad: one attack on all of them)")


def is_name(name: str) -> bool:
    """Whether ``name`` reads as an interpreter's name (a built-in or a ``module:Class`` spec),
    without importing anything: how an experiment file tells per-interpreter settings from
    attack settings. A joint name (``cam+grad``) reads as one when each member does."""
    if "+" in name:
        return all(is_name(member) for member in name.split("+"))
    return name in builtins() or ":" in name


def resolve(name: str) -> type[Interpreter]:
    """The interpreter class ``name`` stands for.

    Arguments:
        name: a built-in's name (``cam``), ``package.module:ClassName`` (the module is
            imported), ``captum:<Name>`` (an adapter of ``captum.attr.<Name>``) or several
            joined by ``+`` (:func:`adv2.interpreters.joint.joint_class`).

    Returns:
        The class; raises ValueError naming ``name`` when the module cannot be imported, has
        no such attribute, or the attribute is not an Interpreter subclass (for a joint name,
        naming the member).
    """
    known = builtins()
    if name in known:
        return known[name]
    for separator, compose in COMPOSITIONS.items():
        if separator in name:
            return compose(name)
    module_name, colon, attribute = name.partition(":")
    if not colon:
        raise ValueError(f"unknown interpreter {name!r}; give {forms()}")
    if not module_name or not attribute.isidentifier():
        raise ValueError(f"interpreter {name!r}: expected package.module:ClassName")
    if module_name == "captum":
        from adv2.interpreters.captum_adapter import attribution

        return attribution(attribute)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not found, or the module itself fails: one line, no traceback
        raise ValueError(f"interpreter {name!r}: cannot import {module_name} "
                         f"({type(exc).__name__}: {exc})") from None
    if not hasattr(module, attribute):
        raise ValueError(f"interpreter {name!r}: module {module_name} has no attribute "
                         f"{attribute!r}")
    cls = getattr(module, attribute)
    if not (isinstance(cls, type) and issubclass(cls, Interpreter)):
        raise ValueError(f"interpreter {name!r}: {module_name}.{attribute} is not a subclass of "
                         "adv2.interpreters.Interpreter")
    return cls


def setting_names(cls: type[Interpreter]) -> list[str] | None:
    """The settings (keyword arguments besides ``model``) the class ``cls`` takes; None when
    it takes any keyword (``**settings``). A joint interpreter's are its members', each plain
    and under the member's name (``pool``, ``grad.pool``)."""
    members = getattr(cls, "member_names", ())
    if members:
        own = {m: setting_names(resolve(m)) for m in members}
        if any(names is None for names in own.values()):
            return None
        return sorted({k for names in own.values() for k in names}) + [
            f"{m}.{k}" for m, names in own.items() for k in names]
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.name != "model"]


def label(name: str) -> str:
    """A short title for an interpreter in figures: a built-in's name in capitals (``CAM``),
    a spec's class name (``IntegratedGradients`` for ``captum:IntegratedGradients``), a
    joint name's members' (``CAM+GRAD``)."""
    if "+" in name:
        return "+".join(label(member) for member in name.split("+"))
    return name.upper() if name in builtins() else name.rpartition(":")[2]


def require_differentiable(interpreter: str | Interpreter) -> None:
    """Refuse (ValueError) an interpreter whose maps are not differentiable: ADV² needs the
    gradient of the map. ``interpreter``: its name (resolved) or the interpreter itself. The
    message names the built-in to attack instead where there is one
    (:data:`~adv2.interpreters.captum_adapter.EQUIVALENTS`)."""
    named = isinstance(interpreter, str)
    if (resolve(interpreter) if named else interpreter).differentiable:
        return
    from adv2.interpreters.captum_adapter import EQUIVALENTS

    name = interpreter if named else interpreter.name
    module_name, _, attribute = name.partition(":")
    equivalent = EQUIVALENTS.get(attribute) if module_name == "captum" else None
    hint = (f"the built-in equivalent is `{equivalent}`" if equivalent else
            f"the built-ins are {', '.join(sorted(builtins()))}")
    raise ValueError(f"{name} is not differentiable: ADV² needs a differentiable interpreter; "
                     f"{hint}")


def build_interpreter(name: str, model: Classifier, **options) -> Interpreter:
    """Instantiate an interpreter by name (a built-in such as ``cam``, ``package.module:Class``
    or ``captum:<Name>``: :func:`adv2.interpreters.plugins.resolve`) with its defaults
    overridden by ``options`` (keyword arguments of its class, e.g. RTS's ``checkpoint`` or
    MASK's ``strategy``). The interpreter's ``name`` becomes ``name``, which reports and
    records go by."""
    cls = resolve(name)
    try:
        check_options(cls, options)
    except ValueError as exc:
        raise ValueError(f"interpreter {name!r}: {exc}") from None
    try:
        interpreter = cls(model, **options)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"interpreter {name!r}: {exc}") from exc
    interpreter.name = name
    return interpreter
