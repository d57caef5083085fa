"""What a requester sends to invite a doctor: the request body, validated field by field.

The pre-anesthesia summary follows what an anesthesiologist checks before accepting: ASA
physical status (I–VI, ``E`` for emergencies), the airway, fasting, anticoagulant or
antiplatelet drugs, allergies (latex asked separately), earlier anesthesia problems, a
family history of malignant hyperthermia, age and weight. It is stored encrypted and shown
to the invited doctor only.

Example
-------
>>> parse({"kind": "consultation", "doctor_id": "d1", "hospital_id": "h1", "date": "2026-12-01",
...        "time": "09:30", "note": "Questions about my father's anesthesia"}, InvitationRequest).kind
'consultation'
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

Id = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Long = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class Operation(msgspec.Struct, forbid_unknown_fields=True):
    procedure: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    expected_minutes: Annotated[int, msgspec.Meta(ge=10, le=24 * 60)]


class Airway(msgspec.Struct, forbid_unknown_fields=True):
    mallampati: Literal[1, 2, 3, 4] | None = None
    limited_mouth_opening: bool = False
    limited_neck_movement: bool = False
    previous_difficult_intubation: bool = False
    notes: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class AnesthesiaSummary(msgspec.Struct, forbid_unknown_fields=True):
    asa_class: Literal["I", "II", "III", "IV", "V", "VI"]
    emergency: bool
    airway: Airway
    fasting: Literal["fasted", "not_fasted", "unknown"]
    anticoagulants: Annotated[list[Short], msgspec.Meta(max_length=10)]
    allergies: Annotated[list[Short], msgspec.Meta(max_length=20)]
    latex_allergy: bool
    malignant_hyperthermia_family_history: Literal["yes", "no", "unknown"]
    age_years: Annotated[int, msgspec.Meta(ge=0, le=130)]
    weight_kg: Annotated[float, msgspec.Meta(ge=0.3, le=400)]
    fasting_hours: Annotated[int, msgspec.Meta(ge=0, le=168)] | None = None
    previous_complications: Annotated[str, msgspec.Meta(max_length=500)] | None = None

    @property
    def asa(self) -> str:
        """The ASA class as written on a chart: ``III`` or ``IIIE``."""
        return self.asa_class + ("E" if self.emergency else "")


class InvitationRequest(msgspec.Struct, forbid_unknown_fields=True):
    kind: Literal["invitation", "consultation"]
    doctor_id: Id
    hospital_id: Id
    date: dt.date
    time: Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    operation: Operation | None = None
    summary: AnesthesiaSummary | None = None
    note: Long | None = None


class Reason(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    text: Long


class InvitationQuery(msgspec.Struct, forbid_unknown_fields=True):
    kind: Literal["invitation", "consultation"] | None = None
    status: (
        Literal[
            "awaiting_payment",
            "pending_response",
            "accepted",
            "completed",
            "confirmed",
            "declined",
            "expired",
            "cancelled",
            "not_delivered",
            "refunding",
            "refunded",
            "closed",
        ]
        | None
    ) = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    cursor: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
