"""Cluster mode: several nodes share one line by applying one replicated log of queue events.

``coordinator.py`` is the replicated decider (one ``queueing.engine.Engine``
per node, fed the log in its one order; pure), ``wire.py`` the log entries'
format (pure), ``log.py`` the Redis stream every node appends to and tails
(asyncio).
"""
