"""The digital bank: 15 small HTTP micro-services, each runnable as ``python -m bank.<name>``.

Shared plumbing lives in :mod:`bank.web` (server, routing, JSON), :mod:`bank.client`
(HTTP/1.1 client with a connection pool) and :mod:`bank.calls` (calls to other services
through the site's gateway). Everything is stdlib asyncio, plus ``httptools`` and ``uvloop``
when they are installed, so 60 instances start in a few seconds on a small machine.
"""
