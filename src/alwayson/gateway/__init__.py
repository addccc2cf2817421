"""The data plane: an HTTP/1.1 reverse proxy on asyncio, uvloop and httptools.

One process per site routes client traffic to healthy instances by a table the controller
pushes (``PUT /routes`` on the admin port); the front door is the same program with a
one-route table whose backends are the site gateways.

Modules, from the bottom up:

- ``routes``     the table's pydantic models, validation and file copy
- ``matching``   (host, path) → route, precomputed
- ``headers``    hop-by-hop rules, forwarding headers, request ids, canned responses
- ``retrying``   when a failed attempt may be tried again (pure)
- ``ejecting``   outlier ejection, timed re-admission and slow start (policy, pure)
- ``metrics``    counters on the hot path, Prometheus text on scrape
- ``exchanges``  the state of one request crossing the gateway, limits, shared context
- ``relaying``   a connection to a backend: the response relay
- ``upstreams``  keep-alive pools to backends
- ``balancing``  locality, weights, power of two choices
- ``reading``    parsing client requests: validation against smuggling, limits
- ``proxying``   the client connection: dispatch, retries, local answers, draining
- ``tunnels``    byte relays of upgraded (WebSocket) connections
- ``admin``      the admin HTTP endpoint
- ``handover``   passing the listening sockets to a successor process
- ``settings``   the configuration of a gateway process
- ``serving``    lifecycle, ``run``

Errors: bad tables raise ``routes.InvalidRouteTable`` (a ``PermanentError``), older ones
``routes.StaleRouteTable`` (a ``ConflictError``); a gateway that cannot bind raises
``PermanentError``. Socket errors on the data path never escape: they become 502/503/504
answers or retries; bad requests become 4xx answers and a closed connection.
"""

from alwayson.gateway.serving import run
from alwayson.gateway.settings import GatewayConfig

__all__ = ["GatewayConfig", "run"]
