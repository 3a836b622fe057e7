"""IVR flows: the ``ivr:`` config section, its compiled form, and the pure interpreter.

- :mod:`ivr.flow.config`: pydantic models, load-time validation, caller groups.
- :mod:`ivr.flow.program`: the validated config compiled into plain dataclasses.
- :mod:`ivr.flow.interpreter`: ``start``/``step``, events in, actions out.
- :mod:`ivr.flow.actions`: the events and actions (the contract with the call).
"""
