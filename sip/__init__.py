"""Sans-I/O SIP and GB/T 28181 signalling.

Nothing in this package touches sockets, files, clocks, threads or asyncio: it turns bytes into
typed objects and back, and state machines take `now` as a parameter.
"""
