"""Black-box attacks: an :class:`Oracle` that answers queries (the prediction and, for the
predicted class, the map) is all they see, and every image it answers is a counted query.
:class:`RandomSearch` is the score-based baseline (``lam`` 0) and black-box ADV² (``lam`` > 0),
from Square's stripes or from the images of a :class:`TransferAttack` on local surrogates."""

import adv2.attacks  # noqa: F401  first: its registry enters this package's attacks
from adv2.blackbox.oracle import ANSWERS, Answer, BudgetExceeded, Oracle
from adv2.blackbox.search import PLACEMENTS, RandomSearch, square_fraction
from adv2.blackbox.transfer import TransferAttack

__all__ = ["ANSWERS", "PLACEMENTS", "Answer", "BudgetExceeded", "Oracle", "RandomSearch",
           "TransferAttack", "square_fraction"]
