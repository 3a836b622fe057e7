"""The config file: its schema, validated at load with errors naming file, line and field.

``config.py`` is the root (``Config``, ``load_config``); the sections are in
``server.py`` (SIP, media, HTTP, storage, texts, admin, registrar),
``queues.py`` (queues, agents, surge, and their translation to the queueing
model), ``callbacks.py`` and ``flows.py`` / ``nodes.py`` (the ``ivr:`` section);
``values.py`` holds the small value types and ``base.py`` the strict model
base and the error reader that ``sim/scenario.py`` shares. Nothing here
imports ``ivr.flow``: the flow compiler imports these models.
"""
