"""A tiny Twisted upstream, used only by ``bench/run --smoke`` when nginx is not installed.

    python tiny_upstream.py PORT NAME BIG_FILE

``/`` answers the 5 bytes ``hello``, ``/big`` sends BIG_FILE, ``/upload``
takes a body (twisted.web reads it whole) and answers ``ok``; every answer
carries ``X-Upstream: NAME``, like the nginx upstreams.  Far slower than
nginx: numbers measured against it only show that the benchmark runs.
"""

import sys

from twisted.internet import reactor
from twisted.web import resource, server, static


class Answer(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes):
        super().__init__()
        self.body = body

    def render(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return self.body


class Root(resource.Resource):
    def __init__(self, name: bytes, big_file: str):
        super().__init__()
        self.name = name
        self.putChild(b"", Answer(b"hello"))
        self.putChild(b"big", static.File(big_file, defaultType="application/octet-stream"))
        self.putChild(b"upload", Answer(b"ok"))

    def getChildWithDefault(self, path, request):
        request.setHeader(b"x-upstream", self.name)
        return super().getChildWithDefault(path, request)


port, name, big_file = sys.argv[1:]
site = server.Site(Root(name.encode(), big_file))
site.log = lambda request: None
reactor.listenTCP(int(port), site, interface="127.0.0.1")
reactor.run()
