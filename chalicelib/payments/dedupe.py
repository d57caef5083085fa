"""Provider dedupe keys: a provider event or object applied once, remembered forever.

A key (``PROVIDER#<channel>#<kind>#<ref>``) is put with ``attribute_not_exists`` in the
same transaction as the change the event causes, so a repeat of the event fails that
transaction as a whole and changes nothing.

Example
-------
>>> seen_key("wechat", "event", "EV-1")
'PROVIDER#wechat#event#EV-1'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.clock import iso
from chalicelib.models.ledger import ProviderSeen

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from chalicelib.models.transactions import Batch


def seen_key(channel: str, kind: str, ref: str) -> str:
    return f"PROVIDER#{channel}#{kind}#{ref}"


def add_seen(batch: Batch, keys: Iterable[str], order_id: str, now: datetime) -> None:
    """Add to ``batch`` the keys of what is being applied to ``order_id`` (each must be new)."""
    for index, key in enumerate(keys):
        item = ProviderSeen(key, "SEEN")
        item.order_id, item.created_at = order_id, iso(now)
        batch.put(f"seen:{index}", item, condition=ProviderSeen.pk.does_not_exist())
