"""SIP, sans-IO: messages, transactions, inbound and outbound dialogs, SDP, the registrar; ``ua.py`` is the facade."""
