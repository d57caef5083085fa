"""The published star-level formula (``reputation.formula``): pure, exact, and as the README states it."""

from __future__ import annotations

import doctest
from fractions import Fraction

import pytest

from chalicelib.config import StarRules
from chalicelib.doctors.ranking import rank_key
from chalicelib.reputation import formula
from chalicelib.reputation.formula import Reputation, bayesian_score, experience_cap, star_level

RULES = StarRules()


def level(completed: int, count: int, total: int, penalties: int = 0, rules: StarRules = RULES) -> float:
    return star_level(
        completed=completed, rating_count=count, rating_sum=total, penalties=penalties, rules=rules
    ).star_level


def test_the_docstring_examples_hold() -> None:
    # The module's examples are the published worked examples: they must stay true.
    result = doctest.testmod(formula, verbose=False)
    assert result.attempted >= 4
    assert result.failed == 0


def test_the_defaults_are_the_published_ones() -> None:
    assert (RULES.prior_mean, RULES.prior_weight, RULES.penalty_stars, RULES.penalty_days) == (4.0, 10, 1.0, 90)
    assert RULES.tiers == ((1, 3.0), (10, 4.0), (30, 4.5), (100, 5.0))


def test_three_five_star_reviews_rank_below_three_hundred_averaging_four_point_eight() -> None:
    # GIVEN two doctors with the same experience: three 5-star reviews, and 300 reviews summing to 4.8 each
    few = star_level(completed=300, rating_count=3, rating_sum=15, penalties=0, rules=RULES)
    many = star_level(completed=300, rating_count=300, rating_sum=1440, penalties=0, rules=RULES)
    # THEN the plain average favours the few, the Bayesian score and the level favour the many
    assert few.rating_average == 5.0 and many.rating_average == 4.8
    assert (few.rating_score, many.rating_score) == (4.231, 4.774)
    assert (few.star_level, many.star_level) == (4.0, 5.0)
    # ... and so does the discovery order (ascending keys: best first)
    ordered = sorted(
        [rank_key(few.star_level, few.rating_score, "few"), rank_key(many.star_level, many.rating_score, "many")]
    )
    assert ordered[0].endswith("#many")


def test_the_bayesian_score_is_exact() -> None:
    assert bayesian_score(0, 0, RULES) == Fraction(4)
    assert bayesian_score(3, 15, RULES) == Fraction(55, 13)
    assert bayesian_score(300, 1440, RULES) == Fraction(1480, 310)


@pytest.mark.parametrize(
    ("completed", "cap"),
    [(0, 0), (1, 3), (9, 3), (10, 4), (29, 4), (30, 4.5), (99, 4.5), (100, 5), (10_000, 5)],
)
def test_experience_sets_the_highest_reachable_level(completed: int, cap: float) -> None:
    assert experience_cap(completed, RULES) == Fraction(str(cap))


@pytest.mark.parametrize(("completed", "expected"), [(1, 3.0), (10, 4.0), (30, 4.5), (100, 5.0)])
def test_near_perfect_ratings_are_capped_by_experience(completed: int, expected: float) -> None:
    # 1 000 five-star reviews score 4.99 (5 stars once rounded): the cap decides until the top tier
    assert level(completed, 1000, 5000) == expected


def test_five_stars_need_both_the_top_tier_and_a_score_of_four_point_seven_five() -> None:
    # the default prior of 4 keeps every score below 5: rounding to the nearest half star makes 5 reachable
    assert level(100, 10, 55) == 5.0  # score 4.75 exactly: halves round up
    assert level(100, 10, 54) == 4.5  # score 4.7
    assert level(99, 300, 1440) == 4.5  # a score of 4.77 still needs a hundred completed invitations


def test_no_completed_invitation_means_no_level_whatever_the_reviews() -> None:
    result = star_level(completed=0, rating_count=3, rating_sum=15, penalties=0, rules=RULES)
    assert result == Reputation(star_level=0.0, rating_score=4.231, rating_average=5.0)
    assert level(0, 0, 0) == 0.0


def test_no_ratings_score_the_prior_mean() -> None:
    assert star_level(completed=12, rating_count=0, rating_sum=0, penalties=0, rules=RULES) == Reputation(
        star_level=4.0, rating_score=4.0, rating_average=0.0
    )


@pytest.mark.parametrize(
    ("count", "total", "expected"),
    [
        (10, 49, 4.5),  # score 4.45: to the nearer 4.5
        (10, 50, 4.5),  # score exactly 4.5 stays 4.5 (exact fractions: no 4.4999...)
        (10, 45, 4.5),  # score 4.25, exactly between: halves round up
        (10, 44, 4.0),  # score 4.2
        (10, 30, 3.5),  # score 3.5 exactly
        (10, 29, 3.5),  # score 3.45
        (40, 40, 1.5),  # score 1.6
    ],
)
def test_the_level_is_rounded_to_the_nearest_half_star(count: int, total: int, expected: float) -> None:
    assert level(100, count, total) == expected


def test_a_prior_mean_that_is_not_a_binary_fraction_is_still_exact() -> None:
    # (10 * 4.1 + 49) / 20 is 4.5 exactly; in floats 4.1 is not, but the formula reads it as 41/10
    rules = StarRules(prior_mean=4.1)
    assert bayesian_score(10, 49, rules) == Fraction(9, 2)
    assert level(100, 10, 49, rules=rules) == 4.5


@pytest.mark.parametrize(("penalties", "expected"), [(0, 5.0), (1, 4.0), (2, 3.0), (4, 1.0), (5, 0.0), (9, 0.0)])
def test_penalties_lower_the_level_and_never_below_zero(penalties: int, expected: float) -> None:
    assert level(300, 300, 1440, penalties) == expected


def test_the_penalty_step_is_configured_and_lowers_the_level_not_the_score() -> None:
    half = StarRules(penalty_stars=0.5)
    penalised = star_level(completed=300, rating_count=300, rating_sum=1440, penalties=3, rules=half)
    assert penalised.star_level == 3.5
    assert penalised.rating_score == 4.774 and penalised.rating_average == 4.8


def test_a_negative_penalty_count_counts_as_none() -> None:
    # A lift delivered before its penalty briefly leaves the count at -1: it must not raise the level
    assert level(300, 300, 1440, -1) == level(300, 300, 1440, 0) == 5.0


def test_a_penalised_doctor_without_a_level_stays_at_zero() -> None:
    assert level(0, 0, 0, 3) == 0.0


def test_the_same_inputs_always_give_the_same_reputation() -> None:
    inputs = {"completed": 37, "rating_count": 23, "rating_sum": 101, "penalties": 1, "rules": RULES}
    first = star_level(**inputs)
    assert all(star_level(**inputs) == first for _ in range(5))
    assert first == star_level(**{**inputs, "rules": StarRules()})
    assert isinstance(first.star_level, float) and (first.star_level * 2).is_integer()


def test_a_lower_rating_never_raises_the_level() -> None:
    # Monotonic in the sum of ratings for a fixed number of reviews and experience
    levels = [level(100, 20, total) for total in range(20, 101)]
    assert levels == sorted(levels)
    assert levels[0] == 2.0 and levels[-1] == 4.5
