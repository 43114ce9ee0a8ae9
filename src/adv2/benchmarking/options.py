"""The options every benchmark page's command takes: its images, seed, device, work folder and
the page it writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from adv2.benchmarking.images import default_images

#: what ``--work`` keeps, for a script that keeps each attacked image's outcome
IMAGE_BY_IMAGE = ("keep each image's outcome here as it is made; the same command with the "
                  "same --work resumes an interrupted run")


def add_page_options(parser: argparse.ArgumentParser, script: str | Path,
                     work: str = IMAGE_BY_IMAGE) -> None:
    """Adds ``--images`` (default: the ImageNet sample beside the checkout holding
    ``script``, :func:`~adv2.benchmarking.images.default_images`), ``--seed``, ``--device``,
    ``--work`` and ``--out`` to a benchmark script's parser.

    Arguments:
        parser: the script's parser.
        script: the script's file (its ``__file__``).
        work: the help of ``--work`` (what the work folder keeps).

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_page_options(parser, __file__)
        >>> parser.parse_args(["--seed", "1", "--out", "page.md"]).seed
        1
    """
    parser.add_argument("--images", type=Path, default=default_images(script),
                        help="the labelled images (default: the ImageNet sample)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the seed of the choice of images, targets and attacks")
    parser.add_argument("--device", default="cpu",
                        help="the torch device everything runs on (e.g. cuda)")
    parser.add_argument("--work", type=Path, help=work)
    parser.add_argument("--out", type=Path, help="also write the Markdown page here")
