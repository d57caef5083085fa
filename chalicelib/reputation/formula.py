"""The star level (M-m, C8): one pure function of completed invitations, ratings and penalties.

The formula, as published in the README:

1. **Rating score**, a Bayesian average: ``(W * M + sum of ratings) / (W + number of ratings)``,
   where ``M`` (``STAR_PRIOR_MEAN``, 4.0) is what the platform assumes of a doctor it has no
   reviews of, and ``W`` (``STAR_PRIOR_WEIGHT``, 10) how many reviews that assumption weighs.
   Three 5-star reviews score 4.23; three hundred averaging 4.8 score 4.77.
2. **Experience cap**: the number of completed (confirmed) invitations sets the highest level
   reachable (``STAR_TIERS``, default ``1:3,10:4,30:4.5,100:5``: one completed invitation
   opens up to 3 stars, ten up to 4, thirty up to 4.5, a hundred up to 5). Before the first
   completed invitation a doctor has no level (0 stars).
3. **Level** = the score rounded to the nearest half star (halves up), at most the cap. So
   an excellent doctor (score 4.75 or more) can reach 5 stars, which the prior alone never gives.
4. **Penalties** (C8): each confirmed complaint lowers the level directly by
   ``COMPLAINT_PENALTY_STARS`` (1) for ``COMPLAINT_PENALTY_DAYS`` (90) days; never below 0.

Tips never enter the formula. Exact fractions are used throughout, so the same inputs
always give the same level on every machine.

Example
-------
>>> rules = StarRules()
>>> star_level(completed=300, rating_count=300, rating_sum=1440, penalties=0, rules=rules).star_level
5.0
>>> star_level(completed=3, rating_count=3, rating_sum=15, penalties=0, rules=rules).star_level
3.0
>>> star_level(completed=12, rating_count=10, rating_sum=48, penalties=1, rules=rules).star_level
3.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from chalicelib.config import StarRules

__all__ = ["Reputation", "StarRules", "bayesian_score", "experience_cap", "ratings", "star_level"]


@dataclass(frozen=True)
class Reputation:
    """What the storefront shows and discovery sorts by, derived from the counts."""

    star_level: float
    """0 to 5 in half steps."""
    rating_score: float
    """The Bayesian average, to 3 decimals: the tie-breaker after the level."""
    rating_average: float
    """The plain average of the ratings, to 2 decimals (0 without ratings)."""


def bayesian_score(rating_count: int, rating_sum: int, rules: StarRules) -> Fraction:
    """``(W * M + sum) / (W + count)``: few reviews stay near the prior mean ``M``."""
    weight = Fraction(rules.prior_weight)
    return (weight * Fraction(str(rules.prior_mean)) + rating_sum) / (weight + rating_count)


def experience_cap(completed: int, rules: StarRules) -> Fraction:
    """The highest level ``completed`` confirmed invitations allow (0 before the first tier)."""
    cap = Fraction(0)
    for needed, stars in rules.tiers:
        if completed >= needed:
            cap = Fraction(str(stars))
    return cap


def ratings(rating_count: int, rating_sum: int, rules: StarRules) -> tuple[float, float]:
    """``(average, score)`` as shown: the plain average to 2 decimals (0 without ratings), the Bayesian score to 3.

    >>> ratings(3, 15, StarRules())
    (5.0, 4.231)
    """
    average = Fraction(rating_sum, rating_count) if rating_count else Fraction(0)
    return round(float(average), 2), round(float(bayesian_score(rating_count, rating_sum, rules)), 3)


def star_level(*, completed: int, rating_count: int, rating_sum: int, penalties: int, rules: StarRules) -> Reputation:
    """The level, score and average of a doctor with these counts (``penalties``: active ones)."""
    score = bayesian_score(rating_count, rating_sum, rules)
    base = min(Fraction(math.floor(score * 2 + Fraction(1, 2)), 2), experience_cap(completed, rules))
    level = max(Fraction(0), base - max(0, penalties) * Fraction(str(rules.penalty_stars)))
    average, shown_score = ratings(rating_count, rating_sum, rules)
    return Reputation(star_level=float(level), rating_score=shown_score, rating_average=average)
