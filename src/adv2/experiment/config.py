"""The experiment file: a YAML mapping validated into :class:`ExperimentConfig`.

Every key is checked: unknown keys, wrong types and bad values raise :class:`ConfigError` with
the dotted key (``attacks.adv2.lam``) and, for unknown keys, the closest valid name. Relative
paths are resolved against the directory of the YAML file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from adv2.detection import build_squeezer, detector_class
from adv2.errors import SettingError
from adv2.interpreters import INTERPRETERS
from adv2.interpreters.option_types import check_options
from adv2.interpreters.plugins import is_name, require_differentiable, resolve, setting_names
from adv2.attacks import ATTACKS
from adv2.attacks.settings import ATTACK_KEYS
from adv2.attacks.support import KINDS
from adv2.attack_config import AttackConfig, build_attack, check_setting, parse_number
#: keys whose values are paths, resolved against the YAML file's directory
PATH_KEYS = ("weights", "images", "labels", "benign_images", "checkpoint", "support")


class ConfigError(ValueError):
    """An experiment file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class DetectionSettings:
    """The registered ``detectors`` (:data:`adv2.detection.DETECTORS`): thresholds fitted on
    ``benign_images`` (the attacked images are left out, so the sets are disjoint) at
    false-positive rate ``fpr``, then applied to every adversarial image. ``squeezers`` are
    feature squeezing's (``squeeze``); ``settings`` maps a detector's name to the other
    keywords of its class (``ensemble: {interpreters: [cam, grad, rts]}``)."""

    benign_images: str
    benign_limit: int | None = 100
    detectors: tuple[str, ...] = ("squeeze",)
    squeezers: tuple[str, ...] = ("bit-2", "bit-3", "median-3x3", "nlm-11-3-4")
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    fpr: float = 0.05

    def detector_settings(self, name: str) -> dict[str, Any]:
        """The settings of the detector ``name``: its ``settings`` entry, and for feature
        squeezing the ``squeezers``."""
        squeezers = {"squeezers": list(self.squeezers)} if name == "squeeze" else {}
        return {**self.settings.get(name, {}), **squeezers}


@dataclass(frozen=True)
class ReportSettings:
    """``examples``: images in the example figure (image and maps per interpreter)."""

    examples: int = 4


@dataclass(frozen=True)
class ExperimentConfig:
    """One evaluation: every interpreter × attack on the same images, transfer, detection.

    ``attacks`` maps ``pgd``/``adv2`` to AttackConfig overrides (:data:`ATTACK_KEYS`), which may
    hold per-interpreter overrides under the interpreter's name; unset values take
    the interpreter's ``attack_defaults``. ``interpreter_settings`` maps an interpreter's name
    to keyword arguments of its class (e.g. ``mask: {strategy: alt, iterations: 500}``), used
    for benign maps, attacks and transfer alike. ADV² skips an interpreter that is not
    differentiable (:meth:`attacks_for`): it takes part in PGD, and in the transfer study as an
    explainer only. ``batch_size`` images form one unit of work (a fixed chunk of the image
    list, so results do not depend on the number of processes).
    ``device`` is where the classifier runs (``cuda``: under torchrun, each rank takes
    ``cuda:LOCAL_RANK``); it is part of the digest, since GPU kernels change MASK's maps.
    """

    images: str
    model: str = "efficientnet_lite0"
    weights: str | None = None
    labels: str | None = None
    limit: int | None = None
    image_size: int = 224
    device: str = "cpu"
    seed: int = 0
    interpreters: tuple[str, ...] = ("cam", "grad")
    interpreter_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    attacks: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"pgd": {}, "adv2": {}})
    eps: float = 8 / 255
    target_class: int | None = None
    target_map: str = "benign"
    support: str = "full"
    batch_size: int = 1
    transfer: bool = True
    detection: DetectionSettings | None = None
    report: ReportSettings = field(default_factory=ReportSettings)

    def attacks_for(self, interpreter: str) -> tuple[str, ...]:
        """The configured attacks run against ``interpreter``: all of them, but those that
        differentiate the interpreter (ADV²: ``AttackEntry.differentiates``) for one that is
        not differentiable."""
        return tuple(a for a in self.attacks
                     if not ATTACKS[a].differentiates or resolve(interpreter).differentiable)

    def adv2_interpreters(self) -> tuple[str, ...]:
        """The interpreters ADV² attacks: the transfer study's sources (its rows)."""
        return tuple(i for i in self.interpreters if "adv2" in self.attacks_for(i))

    def adv2_skipped(self) -> tuple[str, ...]:
        """The interpreters ADV² skips although it is configured: those not differentiable."""
        return tuple(i for i in self.interpreters
                     if "adv2" in self.attacks and i not in self.adv2_interpreters())

    def attack_config(self, interpreter: str, attack: str, seed: int) -> AttackConfig:
        """The AttackConfig of one (interpreter, attack), defaults resolved."""
        settings = {k: v for k, v in self.attacks[attack].items() if k in ATTACK_KEYS}
        settings |= self.attacks[attack].get(interpreter, {})
        return AttackConfig(model=self.model, weights=self.weights, interpreter=interpreter,
                            attack=attack, eps=self.eps, target_class=self.target_class,
                            target_map=self.target_map, support=self.support,
                            batch_size=self.batch_size, seed=seed,
                            **settings).resolved()

    def to_dict(self) -> dict:
        """JSON-ready values (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def digest(self) -> str:
        """SHA-256 of every setting except ``report`` (presentation only)."""
        data = {k: v for k, v in self.to_dict().items() if k != "report"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def _unknown(key: str, where: str, valid: typing.Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key {where}{key}{hint}")


def _number(value: Any, key: str) -> float:
    """A float from a number or a fraction text such as ``8/255``."""
    try:
        return parse_number(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` (int, float, str, bool, X | None,
    tuple[str, ...], a settings dataclass) and convert it."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, key + ".")
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        return _number(value, key)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint in (str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {'text' if hint is str else 'true/false'}, "
                          f"got {value!r}")
    return value


def _dataclass(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the experiment file'}: expected a mapping, "
                          f"got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown(str(key), prefix, names)
    required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    for key in required:
        if key not in data:
            raise ConfigError(f"missing required key {prefix}{key}")
    values = {k: (_attacks(v, prefix + k) if k == "attacks" else _coerce(v, hints[k], prefix + k))
              for k, v in data.items()}
    return cls(**values)


def _attack_settings(data: Any, key: str, nested: bool) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: expected a mapping of attack settings, got {data!r}")
    hints = typing.get_type_hints(AttackConfig)
    out: dict[str, Any] = {}
    for name, value in data.items():
        if nested and is_name(str(name)):
            out[name] = _attack_settings(value, f"{key}.{name}", nested=False)
            continue
        if name not in ATTACK_KEYS:
            valid = ATTACK_KEYS + (tuple(sorted(INTERPRETERS)) if nested else ())
            raise _unknown(str(name), key + ".", valid)
        if name == "lam" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a constant λ written as a number
        out[name] = _coerce(value, hints[name], f"{key}.{name}")
        try:
            check_setting(name, out[name])
        except SettingError as exc:
            raise ConfigError(f"{key}.{name}: {exc.problem}") from None
    return out


def _attacks(data: Any, key: str) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{key}: expected a mapping from {' / '.join(ATTACKS)} to settings")
    for name in data:
        if name not in ATTACKS:
            raise _unknown(str(name), key + ".", ATTACKS)
    return {name: _attack_settings(data[name], f"{key}.{name}", nested=True)
            for name in ATTACKS if name in data}


def _check(cfg: ExperimentConfig) -> None:
    """Cross-field checks, each naming its key."""
    for i, name in enumerate(cfg.interpreters):
        try:
            resolve(name)
        except ValueError as exc:
            raise ConfigError(f"interpreters[{i}]: {exc}") from None
    if not cfg.interpreters or len(set(cfg.interpreters)) != len(cfg.interpreters):
        raise ConfigError(f"interpreters: expected distinct names, got {list(cfg.interpreters)}")
    if not isinstance(cfg.interpreter_settings, dict):
        raise ConfigError("interpreter_settings: expected a mapping from interpreter names to "
                          f"keyword arguments, got {cfg.interpreter_settings!r}")
    for name, settings in cfg.interpreter_settings.items():
        key = f"interpreter_settings.{name}"
        if name not in cfg.interpreters:
            raise ConfigError(f"{key}: {name!r} is not in interpreters {list(cfg.interpreters)}")
        if not isinstance(settings, dict):
            raise ConfigError(f"{key}: expected a mapping of keyword arguments, got {settings!r}")
        valid = setting_names(resolve(name))
        for option in settings:
            if valid is not None and option not in valid:
                raise _unknown(str(option), key + ".", valid)
        try:
            check_options(resolve(name), settings)
        except ValueError as exc:
            raise ConfigError(f"{key}.{exc}") from None
    for attack, settings in cfg.attacks.items():  # an interpreter's overrides of an attack
        for name in settings:
            if name not in ATTACK_KEYS and name not in cfg.interpreters:
                raise ConfigError(f"attacks.{attack}.{name}: {name!r} is not in interpreters "
                                  f"{list(cfg.interpreters)}")
    for key in ("target_map", "eps", "device", "batch_size", "target_class", "limit",
                "support", "seed"):
        try:
            check_setting(key, getattr(cfg, key))
        except SettingError as exc:
            raise ConfigError(str(exc)) from None
    for key in ("image_size",):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be ≥ 1, got {value}")
    if cfg.report.examples < 0:
        raise ConfigError(f"report.examples: must be ≥ 0, got {cfg.report.examples}")
    if cfg.transfer and "adv2" not in cfg.attacks:
        raise ConfigError("transfer: the transfer study needs the adv2 attack in 'attacks'")
    if "adv2" in cfg.attacks and not cfg.adv2_interpreters():
        try:  # ADV² would attack no interpreter: why the first one cannot be
            require_differentiable(cfg.interpreters[0])
        except ValueError as exc:
            raise ConfigError(f"attacks.adv2 ({cfg.interpreters[0]}): {exc}; none of this "
                              "experiment's interpreters is differentiable") from None
    for i, name in enumerate(cfg.interpreters):
        if not cfg.attacks_for(name):
            raise ConfigError(f"interpreters[{i}]: {name} is not differentiable, so ADV² skips "
                              "it: add pgd to attacks (its PGD records also hold the benign "
                              "maps the transfer study compares with)")
    for interpreter in cfg.interpreters:
        for attack in cfg.attacks_for(interpreter):
            try:
                build_attack(cfg.attack_config(interpreter, attack, cfg.seed), None, None)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"attacks.{attack} ({interpreter}): {exc}") from exc
    if cfg.detection is not None:
        det = cfg.detection
        for i, name in enumerate(det.squeezers):
            try:
                build_squeezer(name)
            except ValueError as exc:
                raise ConfigError(f"detection.squeezers[{i}]: {exc}") from exc
        if not det.squeezers:
            raise ConfigError("detection.squeezers: give at least one squeezer")
        _check_detectors(det)
        if not 0 <= det.fpr < 1:
            raise ConfigError(f"detection.fpr: must be in [0, 1), got {det.fpr}")
        if det.benign_limit is not None and det.benign_limit < 1:
            raise ConfigError(f"detection.benign_limit: must be ≥ 1, got {det.benign_limit}")


def _check_detectors(det: DetectionSettings) -> None:
    """The detectors are registered, ``settings`` names only them, and each takes its
    settings; a ConfigError names the key."""
    if not det.detectors:
        raise ConfigError("detection.detectors: give at least one detector")
    for i, name in enumerate(det.detectors):
        try:
            detector_class(name)
        except SettingError as exc:
            raise ConfigError(f"detection.detectors[{i}]: {exc.problem}") from None
    if not isinstance(det.settings, dict) or not all(
            isinstance(s, dict) for s in det.settings.values()):
        raise ConfigError("detection.settings: expected a mapping from detector names to their "
                          f"settings (mappings), got {det.settings!r}")
    for name, settings in det.settings.items():
        if name not in det.detectors:
            raise ConfigError(f"detection.settings.{name}: not one of detection.detectors "
                              f"({', '.join(det.detectors)})")
        if name == "squeeze" and "squeezers" in settings:
            raise ConfigError("detection.settings.squeeze.squeezers: the squeezers are "
                              "detection.squeezers")
    for name in det.detectors:
        try:
            detector_class(name).check_settings(det.detector_settings(name))
        except SettingError as exc:
            raise ConfigError(f"detection.settings.{name}.{exc.key}: {exc.problem}") from None


def _resolve_paths(data: dict, base: Path) -> dict:
    out = dict(data)
    for key, value in data.items():
        if key == "support" and isinstance(value, str) and value.partition(":")[0] in KINDS:
            continue  # a built-in support, not a path
        if key in PATH_KEYS and isinstance(value, str):
            out[key] = str((base / value).resolve()) if not Path(value).is_absolute() else value
        elif isinstance(value, dict) and key != "attacks":
            out[key] = _resolve_paths(value, base)
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice (the later would
    silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def set_key(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override (the value parsed as YAML) to raw config data."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE")
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a mapping")
        node = child
    try:
        node[last] = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: {text!r} is not a YAML value ({exc})") from None


def parse_config(data: Any, base: str | Path = ".") -> ExperimentConfig:
    """Validate raw data (a mapping as read from YAML); relative paths resolve against
    ``base``."""
    if not isinstance(data, dict):
        raise ConfigError(f"the experiment file must hold a mapping of settings, got {data!r}")
    cfg = _dataclass(ExperimentConfig, _resolve_paths(data, Path(base)), "")
    _check(cfg)
    return cfg


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate an experiment YAML file, after ``key=value`` ``overrides``."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read experiment file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    data = {} if data is None else data
    if isinstance(data, dict):
        for assignment in overrides:
            set_key(data, assignment)
    try:
        return parse_config(data, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
