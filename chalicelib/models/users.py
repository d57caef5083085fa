"""The Users table: accounts, the hospital directory and platform records.

Keys (single-table design, ``pk``/``sk``):

- ``USER#<id>`` / ``PROFILE``: a patient, doctor, hospital or admin account; beside it
  ``DECISION#<time>`` (verification decisions), ``SESSION#<family>`` (refresh-token
  families), ``MEMBERSHIP`` and ``MEMBERSHIP#<time>`` (a hospital's VIP record and its history).
- ``LOGIN#<kind>#<value>`` / ``LOGIN``: one item per login identifier (keyed phone hash,
  WeChat unionid, openid per app). A conditional put makes each identifier unique,
  which a GSI cannot.
- ``REFRESH#<token hash>`` / ``TOKEN``: one refresh token; ``THROTTLE#<key>`` / ``<window>``:
  failed-login counters (both expire by TTL).
- ``HOSPITAL#<id>`` / ``DIRECTORY``: an institution of the hospital directory, with its
  search terms ``TERM#<term>`` beside it.
- ``SYSTEM#<name>`` / ...: platform records such as job heartbeats.
- ``USER#<doctor>`` / ``REPUTATION#<fact>``: the reputation facts applied to a doctor.

Sparse indexes (an item is in an index only while it carries the index's keys):

- ``by_hospital``: verified doctors of one hospital, best rank first.
- ``review_queue``: accounts waiting for the back office, oldest first.
- ``catalogue``: browsable lists (hospitals by city, verified doctors by city).
"""

from __future__ import annotations

from pynamodb.attributes import (
    BooleanAttribute,
    DiscriminatorAttribute,
    ListAttribute,
    MapAttribute,
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


class ReputationMark(UsersTable, discriminator="reputation_mark"):
    """One reputation fact applied to a doctor's aggregates: ``USER#<doctor>`` / ``REPUTATION#<fact>``.

    Facts: ``review#<invitation>``, ``penalty#<complaint>``, ``lift#<complaint>``. The mark
    is put (``attribute_not_exists``) in the same transaction as the aggregate update, so a
    stream record delivered twice, or late, never counts twice. Kept for good: facts never
    change once they exist.
    """

    applied_at = UnicodeAttribute()


class Account(UsersTable, discriminator="account"):
    """A patient, doctor, hospital or admin: ``USER#<id>`` / ``PROFILE``.

    Phone, ID and licence numbers are stored encrypted (``*_cipher``); the masked phone
    is kept for display. ``revision`` grows with every write, so each update can be
    conditional on the version it read. A verified doctor carries the discovery keys
    (``hospital_key``/``rank_key``, ``catalogue_key``/``catalogue_sort``); an account
    waiting for review carries ``review_queue``/``submitted_at``.
    """

    user_id = UnicodeAttribute()
    role = UnicodeAttribute()
    revision = NumberAttribute(default=0)
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute()
    name = UnicodeAttribute(null=True)
    phone_cipher = UnicodeAttribute(null=True)
    phone_masked = UnicodeAttribute(null=True)
    password_hash = UnicodeAttribute(null=True)
    wechat_unionid = UnicodeAttribute(null=True)
    wechat_openids = MapAttribute(null=True)
    id_number_cipher = UnicodeAttribute(null=True)
    # doctor
    hospital_id = UnicodeAttribute(null=True)
    hospital_name = UnicodeAttribute(null=True)
    title = UnicodeAttribute(null=True)
    introduction = UnicodeAttribute(null=True)
    specialties = ListAttribute(of=UnicodeAttribute, null=True)
    invitation_fee = NumberAttribute(null=True)
    consultation_fee = NumberAttribute(null=True)
    accepting_dates = ListAttribute(of=UnicodeAttribute, null=True)
    city = UnicodeAttribute(null=True)
    # reputation: counts kept by the Invitations stream (``anesthesia_count`` by the
    # confirmation itself) and the level derived from them (``reputation.formula``); the
    # average and the Bayesian score are derived from the counts when shown
    star_level = NumberAttribute(default=0)
    rating_count = NumberAttribute(default=0)
    rating_sum = NumberAttribute(default=0)
    penalty_count = NumberAttribute(default=0)
    anesthesia_count = NumberAttribute(default=0)
    # hospital account
    contact_name = UnicodeAttribute(null=True)
    contact_phone_cipher = UnicodeAttribute(null=True)
    contact_phone_masked = UnicodeAttribute(null=True)
    # verification (doctors and hospitals)
    verification_status = UnicodeAttribute(null=True)
    credentials_cipher = UnicodeAttribute(null=True)
    rejection_reason = UnicodeAttribute(null=True)
    verified_at = UnicodeAttribute(null=True)


class LoginAlias(UsersTable, discriminator="login_alias"):
    """One login identifier → its account: ``LOGIN#<kind>#<value>`` / ``LOGIN``."""

    user_id = UnicodeAttribute()
    created_at = UnicodeAttribute()


class LoginThrottle(UsersTable, discriminator="login_throttle"):
    """Failed logins of one phone in one window: ``THROTTLE#login#<phone hash>`` / ``<window start>``."""

    failures = NumberAttribute(default=0)


class RefreshToken(UsersTable, discriminator="refresh_token"):
    """A refresh token, stored by its hash: ``REFRESH#<sha256>`` / ``TOKEN``. Works once."""

    user_id = UnicodeAttribute()
    role = UnicodeAttribute()
    family = UnicodeAttribute()
    issued_at = UnicodeAttribute()
    used_at = UnicodeAttribute(null=True)


class SessionFamily(UsersTable, discriminator="session_family"):
    """A chain of rotated refresh tokens: ``USER#<id>`` / ``SESSION#<family>``.

    Presenting a used refresh token revokes the whole family (the token was stolen or
    replayed), which signs out every device that shares it.
    """

    created_at = UnicodeAttribute()
    revoked = BooleanAttribute(default=False)


class VerificationDecision(UsersTable, discriminator="verification_decision"):
    """An admin's decision on a submission: ``USER#<id>`` / ``DECISION#<time>#<admin>``."""

    decision = UnicodeAttribute()
    reason = UnicodeAttribute(null=True)
    decided_by = UnicodeAttribute()
    decided_at = UnicodeAttribute()


class Membership(UsersTable, discriminator="membership"):
    """A hospital's VIP membership: ``USER#<hospital id>`` / ``MEMBERSHIP``; active while ``ends_at`` is ahead."""

    starts_at = UnicodeAttribute()
    ends_at = UnicodeAttribute()
    source = UnicodeAttribute()
    reference = UnicodeAttribute(null=True)
    updated_by = UnicodeAttribute()
    updated_at = UnicodeAttribute()


class MembershipChange(UsersTable, discriminator="membership_change"):
    """One change of a membership, kept forever: ``USER#<hospital id>`` / ``MEMBERSHIP#<time>``."""

    ends_at = UnicodeAttribute()
    source = UnicodeAttribute()
    reference = UnicodeAttribute(null=True)
    changed_by = UnicodeAttribute()


class Hospital(UsersTable, discriminator="hospital"):
    """An institution of the directory: ``HOSPITAL#<id>`` / ``DIRECTORY``; listed by city in ``catalogue``."""

    hospital_id = UnicodeAttribute()
    name = UnicodeAttribute()
    aliases = ListAttribute(of=UnicodeAttribute, default=list)
    city = UnicodeAttribute()
    province = UnicodeAttribute()
    grade = UnicodeAttribute(null=True)
    created_at = UnicodeAttribute()
    created_by = UnicodeAttribute()


class HospitalTerm(UsersTable, discriminator="hospital_term"):
    """One search term of a hospital: ``HOSPITAL#<id>`` / ``TERM#<term>``.

    In ``catalogue`` under ``HTERM#<first character>`` sorted by ``<term>#<id>``, so a
    prefix query finds hospitals by name, alias, pinyin or initials. It copies the
    hospital's display fields, so a search needs no second read.
    """

    hospital_id = UnicodeAttribute()
    name = UnicodeAttribute()
    city = UnicodeAttribute()
    province = UnicodeAttribute()
    grade = UnicodeAttribute(null=True)


class PayoutAccount(UsersTable, discriminator="payout_account"):
    """Where a doctor's withdrawals are paid: ``USER#<doctor id>`` / ``PAYOUT#<account id>``.

    ``kind``: ``wechat`` (change of the doctor's openid in one of our apps), ``alipay`` or
    ``bank_card``. ``details_cipher`` holds the payee's details (JSON: openid, account or
    card number, and the real name), encrypted; ``label`` is the masked form shown.
    ``identity_hash`` (a keyed hash of kind and identifier) finds the same account again.
    """

    account_id = UnicodeAttribute()
    kind = UnicodeAttribute()
    label = UnicodeAttribute()
    details_cipher = UnicodeAttribute()
    identity_hash = UnicodeAttribute()
    created_at = UnicodeAttribute()
