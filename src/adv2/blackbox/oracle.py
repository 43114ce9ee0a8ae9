"""The query oracle: the only thing a black-box attack sees of the system it attacks.

A deployed interpretable system answers an uploaded image with its prediction and, for the
class it predicts, its explanation map. :class:`Oracle` is that system: it takes uint8-valued
images, answers with what its ``answers`` kind says (probabilities, logits or the hard label;
the map or not), counts every image it answers as one query against a per-image budget, and
hands out nothing else: no gradients, no weights, and no logits unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from adv2.attacks.result import AttackResult, Images, judge
from adv2.data import quantise, to_tensor
from adv2.errors import SettingError
from adv2.interpreters import Interpreter
from adv2.models import device_of

#: what an oracle may answer: the prediction as the hard label, the probabilities or the
#: logits, each with or without the map of the predicted class
ANSWERS = ("label", "scores", "logits", "label+map", "scores+map", "logits+map")


class BudgetExceeded(RuntimeError):
    """A query for images whose per-image budget is spent (``rows``: their indices)."""

    def __init__(self, rows: list[int], budget: int) -> None:
        super().__init__(f"the query budget of {budget} per image is spent for image(s) "
                         f"{', '.join(map(str, rows))}")
        self.rows = rows


@dataclass(frozen=True)
class Answer:
    """The oracle's answer for n images, detached, on the query's device.

    ``labels`` (n,) long: the predicted classes, always; ``probs`` (n×C), ``logits`` (n×C):
    with the ``scores`` and ``logits`` kinds; ``maps`` (n×1×h×w in [0,1]): the interpreter's
    map of each image's predicted class, with a ``+map`` kind; None where not answered.
    """

    labels: torch.Tensor
    probs: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    maps: torch.Tensor | None = None


class Oracle:
    """A classifier and its interpreter behind a query interface.

    Arguments:
        model: the attacked classifier; interpreter: its interpreter (needed for a ``+map``
        kind). answers: one of :data:`ANSWERS`. budget: the queries each image may cost (None:
        unlimited); :meth:`open` starts the count of a batch.

    Shape:
        ``query(x, rows)``: x uint8 n×H×W×3, or float n×3×H×W in [0,1] on the uint8 lattice,
        any device; rows (n,): which images of the opened batch these are (default: all, in
        order).

    Returns:
        :class:`Answer` on x's device (the CPU for numpy images).

    Examples:
        >>> oracle = Oracle(model, CAM(model), answers="scores+map", budget=10_000)
        >>> oracle.open(len(x))
        >>> answer = oracle.query(x)          # one query per image
        >>> oracle.counts                     # doctest: +SKIP
        tensor([1, 1, 1, 1])
    """

    def __init__(self, model: torch.nn.Module, interpreter: Interpreter | None = None,
                 answers: str = "scores+map", budget: int | None = None) -> None:
        if answers not in ANSWERS:
            raise SettingError("answers", f"unknown kind {answers!r}; choose from "
                                          f"{', '.join(ANSWERS)}")
        if answers.endswith("+map") and interpreter is None:
            raise SettingError("answers", f"{answers!r}: an oracle that answers maps needs an "
                                          "interpreter")
        if budget is not None and budget < 0:
            raise SettingError("budget", f"must be ≥ 0 queries per image, got {budget}")
        self._model = model
        self._interpreter = interpreter
        self.answers = answers
        self.budget = budget
        self._counts = torch.zeros(0, dtype=torch.long, device="cpu")

    @property
    def device(self) -> torch.device:
        """Where the system computes (an attack keeps its iterates there)."""
        return device_of(self._model)

    @property
    def maps(self) -> bool:
        """Whether the answers include the map."""
        return self.answers.endswith("+map")

    @property
    def prediction(self) -> str:
        """How the prediction is answered: ``label``, ``scores`` or ``logits``."""
        return self.answers.partition("+")[0]

    def open(self, n: int) -> None:
        """Start counting the queries of a batch of ``n`` images (each at 0)."""
        self._counts = torch.zeros(n, dtype=torch.long, device="cpu")

    @property
    def counts(self) -> torch.Tensor:
        """The queries each image of the opened batch has cost so far ((n,) long, a copy)."""
        return self._counts.clone()

    def left(self) -> torch.Tensor:
        """The queries each image may still cost ((n,) long; a large number without budget)."""
        if self.budget is None:
            return torch.full_like(self._counts, torch.iinfo(torch.long).max)
        return self.budget - self._counts

    def query(self, x: Images, rows: torch.Tensor | None = None) -> Answer:
        """Answer images ``rows`` of the opened batch; each costs one query. A BudgetExceeded
        (nothing answered, nothing counted) when one of them has spent its budget; a
        ValueError for images off the uint8 lattice or outside [0,1]."""
        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        x = to_tensor(x) if isinstance(x, np.ndarray) else x.detach()
        off = ((x * 255 - (x * 255).round()).abs().amax().item() if len(x) else 0.0)
        if not off <= 1e-3 or (len(x) and (x.amin() < 0 or x.amax() > 1)):  # NaN is refused
            raise ValueError("the oracle answers images: uint8 values, or floats in [0,1] on "
                             "the uint8 lattice (k/255)")
        rows = (torch.arange(len(x), device="cpu") if rows is None else rows.detach().cpu().long())
        if len(rows) != len(x) or (len(rows) and not 0 <= rows.min() <= rows.max()
                                   < len(self._counts)):
            raise ValueError(f"query of {len(x)} images with {len(rows)} row indices for an "
                             f"opened batch of {len(self._counts)}: call open(n) first")
        spent = torch.bincount(rows, minlength=len(self._counts))
        over = (spent > self.left()).nonzero().flatten()
        if len(over):
            raise BudgetExceeded(over.tolist(), self.budget)
        self._counts += spent
        x = quantise(x.to(self.device))  # the uint8 image a deployed system receives
        if self.maps:
            logits, maps = self._interpreter.explain_predicted(x)
            maps = maps.detach().to(device)
        else:
            with torch.no_grad():
                logits, maps = self._model(x), None
        logits = logits.detach().to(device)
        return Answer(labels=logits.argmax(dim=1),
                      probs=logits.softmax(dim=1) if self.prediction == "scores" else None,
                      logits=logits if self.prediction == "logits" else None,
                      maps=maps)

    def verdict(self, adv: Images, clean: Images, targets: torch.Tensor,
                target_maps: torch.Tensor | None = None,
                queries: torch.Tensor | None = None) -> AttackResult:
        """The reviewer's judgement of a finished attack (:func:`~adv2.attacks.result.judge`:
        the true model and interpreter on the uint8 images), not counted as queries and never
        part of an attack's search. ``queries`` (default: the counts) fill ``passes``."""
        queries = self.counts if queries is None else queries
        result = judge(adv, clean, targets, self._model, queries,
                       self._interpreter if target_maps is not None else None, target_maps)
        return replace(result, queries=queries.to(result.passes.device))
