"""SIP: sans-IO message, transaction, dialog and SDP code, plus the asyncio shell."""
