"""The double-entry ledger: accounts, postings and the audit of its invariants (design.md §4)."""
