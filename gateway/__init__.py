"""gateway: a reverse proxy and load balancer on Twisted (see README.md)."""

from gateway.compiled import use_sources_if_needed

use_sources_if_needed()  # (before any compiled module is imported: see gateway.compiled)
