"""IVR flows: the compiled form of the ``ivr:`` config section and the pure interpreter.

The section's schema and its load-time checks are settings
(``ivr/settings/flows.py``, ``ivr/settings/nodes.py``); this package imports them.

- :mod:`ivr.flow.program`: the validated config compiled into plain dataclasses.
- :mod:`ivr.flow.interpreter`: ``start``/``step``, events in, actions out.
- :mod:`ivr.flow.actions`: the events and actions (the contract with the call).
"""
