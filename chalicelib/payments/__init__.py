"""Payments: money helpers now; the provider interface and adapters (WeChat Pay v3,
Alipay, UnionPay, sandbox) join them with the payment flows."""
