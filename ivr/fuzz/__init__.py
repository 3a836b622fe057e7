"""The parser-contract fuzz benchmark: mutated SIP datagrams through the real user agent on a virtual clock.

``mutate.py`` (pure) holds the valid datagrams and the mutations; ``run.py`` drives them through
``UserAgent`` and ``CallRouter`` with timers firing, counts escaped exceptions and leftover state, and is
the ``frontdesk bench-fuzz`` command.
"""
