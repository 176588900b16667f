"""Stores: the link key stores and the delivered-key records, in SQLite behind one thread each.

What belongs here: durable state and the thread that owns its database connection
(`sqlite_store.StoreThread`). A store knows nothing of the network: it imports no gRPC,
aiohttp, aiomqtt or protobuf (checked by `make lint`: `[tool.importlinter]` in pyproject.toml).
"""
