"""Twisted's stock reverse proxy, the baseline the gateway must beat by far.

    python twisted_web_proxy.py LISTEN_ENDPOINT... HOST:PORT

``twisted.web.proxy.ReverseProxyResource`` forwards to one server (it cannot
balance), on a new connection per request (``Connection: close`` upstream),
after reading the whole request body.  Each LISTEN_ENDPOINT is a Twisted
endpoint string (``tcp:port=8080:interface=127.0.0.1``, or ``ssl:...`` with
``privateKey=`` and ``certKey=``).  No access log, like the other proxies.
"""

import sys

from twisted.internet import endpoints, reactor
from twisted.web import proxy, server

*listen, upstream = sys.argv[1:]
host, port = upstream.rsplit(":", 1)
site = server.Site(proxy.ReverseProxyResource(host, int(port), b""))
site.log = lambda request: None
for description in listen:
    endpoints.serverFromString(reactor, description).listen(site)
reactor.run()
