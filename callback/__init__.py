"""Callback lists: models, the durable store and its rules, the texts outbox, the shift handover report."""
