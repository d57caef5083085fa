"""Accounts: identities, tokens, profiles, verification and memberships (no Chalice here)."""
