"""The benchmarks' shared code (the scripts under ``benchmarks/`` are its command lines): the
seeded choice of images and their targets (:mod:`~adv2.benchmarking.images`), the
interpreters' noise floors (:mod:`~adv2.benchmarking.floors`), attacks over batches of
samples (:mod:`~adv2.benchmarking.batches`), step costs (:mod:`~adv2.benchmarking.costs`) and
the pages they write and the README reads (:mod:`~adv2.benchmarking.pages`) and the options
of their commands (:mod:`~adv2.benchmarking.options`).

Examples:
    >>> from adv2.benchmarking import image_targets, pick_images, run_batches
    >>> samples = pick_images(model, folder, 8, seed=0)
    >>> out, seconds = run_batches(cfg, model, interpreter, attack, samples,
    ...                            image_targets(model, samples, 0), batch_size=8)
"""

from adv2.benchmarking.batches import (attack_samples, error_by_support, run_batches,
                                       settings_digest, support_fractions)
from adv2.benchmarking.costs import (chooses_surrogate, step_cost, surrogate_unit_costs,
                                     timed)
from adv2.benchmarking.floors import Floor, benign_and_floors, noise_floor
from adv2.benchmarking.images import (default_images, image_targets, images_missing,
                                      interpreter_plan, pick_images, stacked)
from adv2.benchmarking.options import add_page_options
from adv2.benchmarking.pages import publish

__all__ = ["Floor", "add_page_options", "attack_samples", "benign_and_floors", "chooses_surrogate",
           "default_images", "error_by_support", "image_targets", "images_missing",
           "interpreter_plan", "noise_floor", "pick_images", "publish", "run_batches",
           "settings_digest", "stacked", "step_cost", "support_fractions",
           "surrogate_unit_costs", "timed"]
