"""The mirror core: schema, the ordering guard, and the functions that write the mirror.

Receiver, sync and replay change the database only through this package.
"""
