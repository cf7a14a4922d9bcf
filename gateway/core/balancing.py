"""Load-balancing policies: each picks one server among the candidates.

A policy sees only the servers it may use (the pool has already left out the
ones that are down, draining or already tried for this request) and returns
one of them.  Policies keep their own bookkeeping, keyed by server address,
so they can be swapped without touching the servers.
"""

from __future__ import annotations

import hashlib
import math
from typing import ClassVar, Protocol, Sequence


class Candidate(Protocol):
    """What a policy needs to know of a server."""

    address: str
    weight: int
    active: int


class Balancer(Protocol):
    def choose(self, candidates: Sequence[Candidate], key: str) -> Candidate:
        """Pick one of *candidates* (never empty); *key* identifies the client."""

    def plan(self, servers: Sequence[Candidate]) -> None:
        """The pool's usual candidates from now on (a new list whenever they change)."""

    def forget(self, address: str) -> None:
        """A server left the pool."""


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin.

    Every pick adds each candidate's weight to its running score, takes the
    highest score and subtracts the total weight from it.  Over a cycle of
    ``sum(weights)`` picks each server is chosen exactly ``weight`` times, and
    the picks are spread out: weights 3:1 give a a b a, never a run of the
    light server.

    The sequence repeats every cycle, so for the pool's usual candidates (every
    available server, :meth:`plan`) it is worked out once and then read in
    turn: a pick is then a list lookup rather than a pass over every server
    (1.6% of the gateway's instructions per request with two servers).
    Picks among other candidates (a retry leaves out the servers already
    tried) use the scores.  After a new plan the cycle starts again from its
    beginning, as the scores would from zero.
    """

    #: The longest cycle worked out in advance (the weights' sum over their gcd); longer ones use scores.
    PLAN_LIMIT: ClassVar[int] = 1024

    def __init__(self) -> None:
        self._scores: dict[str, int] = {}
        self._planned: Sequence[Candidate] | None = None
        self._cycle: list[Candidate] = []
        self._next = 0

    def plan(self, servers: Sequence[Candidate]) -> None:
        """*servers* is the candidates list the next picks will be made from, unchanged until the next plan.

        The pool calls this whenever its servers, their weights or their
        states change, with a new list each time.
        """
        self._planned = servers
        self._next = 0
        self._cycle = []
        if len(servers) < 2:
            return  # (one server: chosen at once; none: nothing to choose)
        divisor = math.gcd(*(server.weight for server in servers))
        weights = [server.weight // divisor for server in servers]
        total = sum(weights)
        if total > self.PLAN_LIMIT:
            return
        scores = [0] * len(servers)
        for _ in range(total):
            for index, weight in enumerate(weights):
                scores[index] += weight
            best = max(range(len(servers)), key=scores.__getitem__)  # (the first of equal scores, as below)
            scores[best] -= total
            self._cycle.append(servers[best])

    def choose(self, candidates: Sequence[Candidate], key: str = "") -> Candidate:
        if candidates is self._planned and self._cycle:
            index = self._next
            self._next = index + 1 if index + 1 < len(self._cycle) else 0
            return self._cycle[index]
        if len(candidates) == 1:
            return candidates[0]
        scores = self._scores
        best: Candidate | None = None
        best_score = 0
        total = 0
        for server in candidates:
            score = scores.get(server.address, 0) + server.weight
            scores[server.address] = score
            total += server.weight
            if best is None or score > best_score:
                best, best_score = server, score
        assert best is not None
        scores[best.address] = best_score - total
        return best

    def forget(self, address: str) -> None:
        """Drop the score of a server that left the pool (the pool plans again too)."""
        self._scores.pop(address, None)


class LeastConnections:
    """Fewest active requests relative to weight; ties share by weighted round robin."""

    def __init__(self) -> None:
        self._tie_breaker = SmoothWeightedRoundRobin()

    def choose(self, candidates: Sequence[Candidate], key: str = "") -> Candidate:
        tied: list[Candidate] = []
        for server in candidates:
            if not tied:
                tied.append(server)
                continue
            leader = tied[0]
            # active/weight compared without division: a.active * b.weight vs b.active * a.weight
            lhs, rhs = server.active * leader.weight, leader.active * server.weight
            if lhs < rhs:
                tied = [server]
            elif lhs == rhs:
                tied.append(server)
        return self._tie_breaker.choose(tied)

    def plan(self, servers: Sequence[Candidate]) -> None:
        pass  # (ties are few and change with the load: nothing to work out in advance)

    def forget(self, address: str) -> None:
        self._tie_breaker.forget(address)


class IpHash:
    """The same client address goes to the same server while that server is available.

    Weighted rendezvous (highest random weight) hashing: each (client, server)
    pair gets a pseudo-random score scaled by the server's weight, and the
    best score wins.  Adding or removing a server moves only the clients that
    belong to it, unlike ``hash % len(servers)``.
    """

    def choose(self, candidates: Sequence[Candidate], key: str = "") -> Candidate:
        if len(candidates) == 1:
            return candidates[0]
        return max(candidates, key=lambda server: _rendezvous_score(key, server))

    def plan(self, servers: Sequence[Candidate]) -> None:
        pass

    def forget(self, address: str) -> None:
        pass


def _rendezvous_score(key: str, server: Candidate) -> float:
    digest = hashlib.blake2b(f"{key}|{server.address}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # strictly between 0 and 1
    return -server.weight / math.log(unit)


_BALANCERS: dict[str, type[SmoothWeightedRoundRobin | LeastConnections | IpHash]] = {
    "round_robin": SmoothWeightedRoundRobin, "least_conn": LeastConnections, "ip_hash": IpHash}


def make_balancer(policy: str) -> SmoothWeightedRoundRobin | LeastConnections | IpHash:
    """The balancer for a ``balance:`` value (already validated by the config)."""
    return _BALANCERS[policy]()
