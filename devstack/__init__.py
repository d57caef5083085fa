"""The local stack: DynamoDB Local, the API under ``chalice local`` and the event pump.

Never deployed (Chalice packages only ``app.py`` and ``chalicelib/``).
"""
