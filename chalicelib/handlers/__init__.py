"""Chalice blueprints: thin routes, the scheduled jobs and the stream consumers."""
