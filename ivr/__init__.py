"""SIP and media, IVR flows, the call router and the server entry point."""
