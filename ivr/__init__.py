"""The server: sans-IO SIP, media and IVR flows, the transport, live calls, settings, storage, HTTP and the command."""

import queueing  # noqa: F401  (first: its guard decides whether the compiled SIP core is served, queueing/native.py)
