"""``adv2 run``: the paper's whole evaluation from one YAML file (see docs/experiment.md)."""

from adv2.experiment.config import ConfigError, ExperimentConfig, load_config, parse_config
from adv2.experiment.runner import run_experiment

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "parse_config", "run_experiment"]
