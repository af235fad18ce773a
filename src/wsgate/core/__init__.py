"""The transport-neutral core: values and interfaces every transport adapter and service shares.

Nothing here imports aiohttp or any other I/O library: a ``Handshake`` is decided by
``security.admission`` into an ``Accept`` or a ``Reject``; an accepted connection becomes a
``Channel`` (the adapter's) inside a ``LiveSession`` (its identity, deadline and counters), and a
service's ``serve(session, channel)`` only ever sees those. See docs/architecture.md.
"""
