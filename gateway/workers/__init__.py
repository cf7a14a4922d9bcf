"""``workers: N``: one master process and N worker processes, as nginx runs them.

The master (:mod:`gateway.workers.master`) reads the configuration, binds
every listening socket, runs the supervised processes, the admin API, the
state file and SIGHUP reloads; it never accepts a connection itself.  Each
worker (:mod:`gateway.workers.child`, started with ``python -m
gateway.workers.child``) inherits its own listening socket of every
listener as a file descriptor (the master binds one per worker, with
``SO_REUSEPORT``) and serves traffic on them with the same protocols, pools
and health checks as a single-process gateway; the kernel spreads new
connections evenly over the workers' sockets.

Master and worker talk over a pair of pipes (:mod:`gateway.workers.channel`):
the master sends the configuration and the operators' live changes (every
worker applies the same ones, so smooth weighted round robin gives each
server its share in aggregate); a worker sends back its log events, the
servers it finished draining and, when asked, its counters.
"""
