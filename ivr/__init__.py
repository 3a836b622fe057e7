"""The server: sans-IO SIP, media and IVR flows, the transport, live calls, settings, storage, HTTP and the command."""
