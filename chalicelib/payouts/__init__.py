"""Doctors' money out (C10): payout accounts, withdrawals, and the payout settlement that pays them."""
