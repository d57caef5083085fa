"""Invitations and consultations: the state machine and, with it, the flows that fire it."""
