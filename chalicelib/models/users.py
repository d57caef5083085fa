"""The Users table: accounts, the hospital directory and platform records.

Keys (single-table design, ``pk``/``sk``):

- ``USER#<id>`` / ``PROFILE``: a patient, doctor, hospital or admin account.
- ``LOGIN#<kind>#<value>`` / ``LOGIN``: one item per login identifier (phone hash,
  WeChat unionid, openid per app). A conditional put makes each identifier unique,
  which a GSI cannot.
- ``HOSPITAL#<id>`` / ``DIRECTORY``: an institution of the hospital directory.
- ``SYSTEM#<name>`` / ...: platform records such as job heartbeats and stream counters.

Sparse indexes (an item is in an index only while it carries the index's keys):

- ``by_hospital``: verified doctors of one hospital, best rank first.
- ``review_queue``: accounts waiting for the back office, oldest first.
- ``catalogue``: browsable lists (hospitals by city, verified doctors by city).
"""

from __future__ import annotations

from pynamodb.attributes import (
    DiscriminatorAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from chalicelib.config import get_settings


class ByHospitalIndex(GlobalSecondaryIndex):
    """Verified doctors registered at one hospital, ordered by ``rank_key``."""

    class Meta:
        index_name = "by_hospital"
        projection = AllProjection()

    hospital_key = UnicodeAttribute(hash_key=True)
    rank_key = UnicodeAttribute(range_key=True)


class ReviewQueueIndex(GlobalSecondaryIndex):
    """Doctors and hospitals waiting for verification, oldest submission first."""

    class Meta:
        index_name = "review_queue"
        projection = AllProjection()

    review_queue = UnicodeAttribute(hash_key=True)
    submitted_at = UnicodeAttribute(range_key=True)


class CatalogueIndex(GlobalSecondaryIndex):
    """Browsable lists: ``catalogue_key`` names the list, ``catalogue_sort`` orders it."""

    class Meta:
        index_name = "catalogue"
        projection = AllProjection()

    catalogue_key = UnicodeAttribute(hash_key=True)
    catalogue_sort = UnicodeAttribute(range_key=True)


class UsersTable(Model):
    """Base of every item in the Users table; ``item_type`` selects the subclass."""

    class Meta:
        table_name = get_settings().users_table
        billing_mode = "PAY_PER_REQUEST"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    item_type = DiscriminatorAttribute(attr_name="type")

    hospital_key = UnicodeAttribute(null=True)
    rank_key = UnicodeAttribute(null=True)
    review_queue = UnicodeAttribute(null=True)
    submitted_at = UnicodeAttribute(null=True)
    catalogue_key = UnicodeAttribute(null=True)
    catalogue_sort = UnicodeAttribute(null=True)
    expires_at = TTLAttribute(null=True)

    by_hospital = ByHospitalIndex()
    by_review_queue = ReviewQueueIndex()
    by_catalogue = CatalogueIndex()


class JobHeartbeat(UsersTable, discriminator="job_heartbeat"):
    """The last run of a scheduled job: ``SYSTEM#heartbeat`` / ``<job name>``."""

    last_run_at = UTCDateTimeAttribute()
    runs = NumberAttribute(default=0)


class StreamChangeCount(UsersTable, discriminator="stream_change_count"):
    """How many stream records of one table were applied: ``SYSTEM#stream-changes`` / ``<table>``."""

    inserts = NumberAttribute(default=0)
    modifies = NumberAttribute(default=0)
    removes = NumberAttribute(default=0)


class AppliedStreamRecord(UsersTable, discriminator="applied_stream_record"):
    """Marks one stream record as applied, so a redelivery changes nothing.

    Stream records live 24 h, so the marker expires after two days.
    """
