"""What the server keeps in its database besides the callback lists: call records, notices, the audit log.

The tables hang off ``ivr.storage.records.RecordsBase``; ``upgrade.py`` adds
columns a newer version defines to an older database.
"""
