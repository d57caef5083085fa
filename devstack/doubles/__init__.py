"""Payment providers played on loopback: WeChat Pay v3, Alipay and UnionPay doubles that speak each wire format.

Each double checks our signed requests with our merchant keys, answers and notifies with keys
of its own (generated offline by its ``make_credentials``), so the production adapters run end
to end without a merchant account. ``server.serve`` puts any of them on a local port.
"""
