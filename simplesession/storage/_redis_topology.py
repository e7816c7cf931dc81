"""What a Redis client of :class:`~simplesession.RedisStorage` reaches: one server, a Sentinel
service or a cluster; its address for messages, and the servers a listing must visit.

The address doubles as the identity of the storage's locks in this process (with the
prefix): two storages on the same place share their locks' gates, so that one nested in
the other is re-entry. So it is made from what the client itself connects to, never from
a default: a client whose place cannot be told gets an identity of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

__all__ = ["CLUSTER_SCHEMES", "Topology", "client_from_url"]

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""URL schemes that name a cluster (any of its nodes), and the scheme redis-py reads them by."""


def _no_retries() -> Any:
    # A retried script may find its own effect done and report it failed (or wait for its
    # own lock): RedisStorage's calls are made once, each bounded by the socket timeout.
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def client_from_url(url: str, timeout: float) -> Any:
    """A client for ``url`` whose every call gives up after ``timeout`` seconds, with no retries.

    ``redis+cluster://host:port`` (or ``rediss+cluster://``) names a cluster by any of its nodes.
    """
    import redis
    import redis.cluster

    scheme, sep, rest = url.partition("://")
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if sep and scheme.lower() in CLUSTER_SCHEMES:
        # The cluster client follows MOVED and fails over by itself, a bounded number of times.
        return redis.cluster.RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme.lower()]}://{rest}", **options)
    return redis.Redis.from_url(url, retry=_no_retries(), **options)


def _node(host: object, port: object) -> str:
    host = str(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Topology:
    """How one client reaches its data: ``kind`` is ``"server"``, ``"sentinel"`` or ``"cluster"``.

    :ivar address: where, in a few words, without credentials (it goes into messages and logs).
    """

    def __init__(self, client: Any) -> None:
        import redis.cluster

        self.client = client
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        if self.cluster:
            self.kind = "cluster"
            nodes = sorted(_node(node.host, node.port) for node in client.get_primaries())
            self.address = f"redis+cluster://{','.join(nodes)}"
            return
        pool = getattr(client, "connection_pool", None)
        kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", {})
        db = kwargs.get("db", 0)
        manager = getattr(pool, "sentinel_manager", None)
        if pool is not None and manager is not None:
            self.kind = "sentinel"
            sentinels = sorted(_node(*_host_port(s)) for s in manager.sentinels)
            role = "" if getattr(pool, "is_master", True) else "?role=replica"
            self.address = f"redis+sentinel://{','.join(sentinels)}/{pool.service_name}/{db}{role}"
        elif kwargs.get("path"):
            self.kind = "server"
            self.address = f"unix://{kwargs['path']}?db={db}"
        elif "host" in kwargs:
            self.kind = "server"
            self.address = f"redis://{_node(kwargs['host'], kwargs.get('port', 6379))}/{db}"
        else:  # a client of a kind we cannot see into: its own identity, shared with no other
            self.kind = "server"
            self.address = f"{type(client).__name__} at {id(client):#x}"

    def servers(self) -> Iterator[tuple[str, redis.Redis]]:
        """``(address, client)`` of each server that holds a part of the data: every primary
        of a cluster (as it is now), else the client itself."""
        if not self.cluster:
            yield self.address, self.client
            return
        for node in self.client.get_primaries():
            yield _node(node.host, node.port), self.client.get_redis_connection(node)

    def master(self) -> str | None:
        """Where a Sentinel client writes now (``host:port``), if it is one and can tell."""
        if self.kind != "sentinel":
            return None
        try:
            host, port = self.client.connection_pool.get_master_address()
        except Exception:  # no sentinel answers: the address says what was asked
            return None
        return _node(host, port)


def _host_port(sentinel: Any) -> tuple[object, object]:
    kwargs = sentinel.connection_pool.connection_kwargs
    return kwargs.get("host", "?"), kwargs.get("port", "?")
