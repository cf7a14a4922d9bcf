"""The twistd dropin: ``twistd gateway -c config.yaml``.  Keep it to this one line."""

from twisted.application.service import ServiceMaker

gateway = ServiceMaker("gateway", "gateway.tap", "Reverse proxy and load balancer configured in YAML", "gateway")
