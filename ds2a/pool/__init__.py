"""Account pool: leases, fair queueing, health, token store, prepared tickets, failover."""

from ds2a.pool.account import Account, Health, Ticket
from ds2a.pool.pool import AccountPool, Lease

__all__ = ["Account", "AccountPool", "Health", "Lease", "Ticket"]
