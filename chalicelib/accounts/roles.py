"""Who may call what: the roles and the authenticated caller.

``vip_hospital`` is not a role an account holds: it is a hospital with an active
membership, checked when a route asks for it.

Example
-------
>>> Principal("u1", DOCTOR).is_admin
False
"""

from __future__ import annotations

from dataclasses import dataclass

ANON = "anon"
PATIENT = "patient"
DOCTOR = "doctor"
HOSPITAL = "hospital"
VIP_HOSPITAL = "vip_hospital"
ADMIN = "admin"

ACCOUNT_ROLES = (PATIENT, DOCTOR, HOSPITAL, ADMIN)
"""The roles an account holds (a token's ``role`` claim is one of these)."""
SELF_SERVICE_ROLES = (PATIENT, DOCTOR, HOSPITAL)
"""The roles anyone may sign up for; admins are made by an operator command."""
SIGNED_IN = frozenset(ACCOUNT_ROLES)
"""Every signed-in caller, whatever the role."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN
