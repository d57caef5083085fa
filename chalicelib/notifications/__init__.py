"""Telling users what happened: the outbox written with each change, and the ``Notifier`` that sends it."""
