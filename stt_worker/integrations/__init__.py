"""Adapters that plug the worker into voice-agent frameworks (docs/integrations.md).

Each speaks the NATS protocol as a publisher does and imports its framework; nothing in the
worker imports them, and each framework comes with its own optional extra.
"""
