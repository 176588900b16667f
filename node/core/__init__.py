"""The I/O-free core: the physics and the mathematics of a link, nothing that waits.

What belongs here: the channel model and the emulated quantum channel, decoy-state estimation,
Cascade, Toeplitz privacy amplification, polynomial hashing for Wegman-Carter tags, live
channel changes, bit packing. Each module is pure computation on numbers and arrays (numpy,
pyFFTW), documented with its formulas; none imports gRPC, aiohttp, aiomqtt, protobuf, SQLite or
asyncio (a contract `make lint` checks: `[tool.importlinter]` in pyproject.toml), so each is
tested and benchmarked on its own and runs off the event loop.
"""
