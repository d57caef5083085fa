"""Where a verified doctor appears in discovery, and in which order.

The sort key orders by star level, then the Bayesian rating score, best first, so a plain ascending
index query lists the best doctors first. Reputation updates rewrite it.

Example
-------
>>> rank_key(4.5, 4.87, "d1")
'05#013#d1'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.models.users import Account

DOCTOR_CATALOGUE = "DOCTORS"
DISCOVERY_ATTRIBUTES = ("hospital_key", "rank_key", "catalogue_key", "catalogue_sort")


def rank_key(star_level: float, rating_average: float, user_id: str) -> str:
    """``<50 - stars*10>#<500 - rating*100>#<id>``: ascending order is best first."""
    stars = max(0, min(50, round(star_level * 10)))
    rating = max(0, min(500, round(rating_average * 100)))
    return f"{50 - stars:02d}#{500 - rating:03d}#{user_id}"


def discovery_keys(account: Account) -> dict[str, str]:
    """The index attributes that list a verified doctor under their hospital and in the catalogue.

    The order is the stored level, then the Bayesian score of the doctor's ratings: the same
    key the reputation stream writes.
    """
    from chalicelib.config import get_settings
    from chalicelib.reputation.formula import ratings

    _, score = ratings(int(account.rating_count or 0), int(account.rating_sum or 0), get_settings().star_rules)
    key = rank_key(float(account.star_level or 0), score, account.user_id)
    return {
        "hospital_key": f"HOSPITAL#{account.hospital_id}",
        "rank_key": key,
        "catalogue_key": DOCTOR_CATALOGUE,
        "catalogue_sort": key,
    }
