"""Every module of adv2 imports on its own, whatever was imported before (no import cycles)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import adv2


def test_every_module_imports_first() -> None:
    names = sorted(m.name for m in pkgutil.walk_packages(adv2.__path__, "adv2.")
                   if m.name != "adv2.__main__")  # that one runs the CLI
    assert "adv2.experiment.config" in names and "adv2.attacks.adaptive" in names
    saved = {k: v for k, v in sys.modules.items() if k == "adv2" or k.startswith("adv2.")}
    failures = {}
    try:
        for name in names:
            for key in [k for k in sys.modules if k == "adv2" or k.startswith("adv2.")]:
                del sys.modules[key]
            try:
                importlib.import_module(name)
            except ImportError as exc:
                failures[name] = str(exc)
    finally:
        for key in [k for k in sys.modules if k == "adv2" or k.startswith("adv2.")]:
            del sys.modules[key]
        sys.modules.update(saved)
    assert not failures, failures
