"""``PrefixAffinityRouter``: a Ray Serve request router that sends each request to the replica
most likely to hold its prompt's prefix in its KV cache.

A request carries (from the ingress, in its payload's ``routing``) the chain hashes of its
prompt's first blocks, computed as the engine's prefix cache computes them, and optionally a
session id (``x-session-affinity``), a region (``x-infire-region``) and a pinned model
fingerprint (``x-infire-fingerprint``). Replicas publish their fingerprint and region once, when
ready (``record_replica_metadata``). For each request, in order of preference:

1. only replicas of the pinned fingerprint (when pinned) are candidates, never another version;
2. within the request's region: the replica that served its session, or its longest known
   prefix when that covers more than half of the prompt's blocks, unless saturated
   (``saturation`` requests or more in its queue); else the less loaded of two random
   non-saturated replicas (power of two choices);
3. the same over every region (spill-over when the region's replicas are saturated or down);
4. the less loaded of two of any candidates (all saturated: Ray backs off and retries).

The first choice then owns the request's prefixes and session in the router's table (and the
replica Ray reports it routed to, where it reports one). When the cluster traces, each choice is
a ``route`` span under the ingress's, and the parent of the replica's span (``tracing``).
"""

from __future__ import annotations

import logging
import random

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from . import tracing
from .affinity import AffinityTable, routing_keys

logger = logging.getLogger("ray.serve")


def request_payload(pending_request: PendingRequest | None) -> dict:
    """The payload the ingress sent (empty without one)."""
    if pending_request is None or not pending_request.args:
        return {}
    payload = pending_request.args[0]
    return payload if isinstance(payload, dict) else {}


def request_routing(pending_request: PendingRequest | None) -> dict:
    """The ``routing`` dict the ingress put in the request's payload (empty without one)."""
    return request_payload(pending_request).get("routing", {})


def trace_choice(payload: dict, choice: RunningReplica, why: str, candidates: int) -> None:
    """Records the router's choice as a ``route`` span under the ingress's span, and makes it
    the parent of the replica's (``route_trace``, read when the payload reaches the replica)."""
    tracer = tracing.current()
    if tracer is None or "trace" not in payload:
        return
    span = tracer.start_span("route", context=tracing.context_of(payload["trace"]))
    span.set_attributes(
        {
            "infire.route.replica": choice.replica_id.unique_id,
            "infire.route.reason": why,
            "infire.route.candidates": candidates,
        }
    )
    span.end()
    payload["route_trace"] = tracing.carrier_of(span)


def holds_fingerprint(replica: RunningReplica, pin: str | None) -> bool:
    """Whether ``replica`` serves the pinned fingerprint (a full one or a prefix of at least
    ``fp_`` and 12 hex digits); every replica does when nothing is pinned."""
    if not pin:
        return True
    held = replica.replica_metadata.get("fingerprint", "")
    return held == pin or (len(pin) >= 15 and held.startswith(pin))


class PrefixAffinityRouter(RequestRouter):
    """Prefix-cache and session affinity with region preference (see the module docs)."""

    def initialize_state(self, saturation: int = 8, table_size: int = 200_000) -> None:
        self._saturation = saturation
        self._table = AffinityTable(table_size)

    def _saturated(self, replica: RunningReplica) -> bool:
        queue = self.replica_queue_len_cache.get(replica.replica_id)
        limit = min(self._saturation, replica.max_ongoing_requests)
        return queue is not None and queue >= limit

    def _queue_len(self, replica: RunningReplica) -> int:
        return self.replica_queue_len_cache.get(replica.replica_id) or 0

    def _two_choices(self, replicas: list[RunningReplica]) -> list[RunningReplica]:
        """Two random replicas, the less loaded first (Ray probes both and takes the one with
        the shorter queue that accepts)."""
        pair = random.sample(replicas, min(2, len(replicas)))
        return sorted(pair, key=self._queue_len)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            # Every rank below is tried before Ray backs off (without this it would spin).
            pending_request.routing_context.should_backoff = True
        routing = request_routing(pending_request)
        eligible = [
            r for r in candidate_replicas if holds_fingerprint(r, routing.get("fingerprint"))
        ]
        if not eligible:
            return []
        region = routing.get("region")
        local = [r for r in eligible if region and r.replica_metadata.get("region") == region]
        keys = routing_keys(routing.get("block_hashes", []), routing.get("session"))
        ranks: list[list[RunningReplica]] = []
        why = "load"
        for pool in (local, eligible) if local else (eligible,):
            free = [r for r in pool if not self._saturated(r)]
            owner = self._table.lookup(keys, {r.replica_id for r in free}) if keys else None
            if owner is not None:
                why = "affinity" if not ranks else why
                ranks.append([self._replicas[owner]])
            if free:
                # The less loaded of two, alone first: the choice is known here, so the table
                # can record it (Ray reports the routed replica only in some modes).
                pair = self._two_choices(free)
                ranks += [pair[:1], pair[1:]]
        ranks.append(self._two_choices(local or eligible))
        ranks = [rank for rank in ranks if rank]
        if keys:
            self._table.record(keys, ranks[0][0].replica_id)
        trace_choice(request_payload(pending_request), ranks[0][0], why, len(eligible))
        return ranks

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result
    ) -> None:
        routing = request_routing(pending_request)
        keys = routing_keys(routing.get("block_hashes", []), routing.get("session"))
        if keys:
            self._table.record(keys, replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._table.forget(replica_id)
