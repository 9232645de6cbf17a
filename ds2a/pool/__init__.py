"""Account pool: leases, fair queueing, health, token store, prepared tickets, failover."""

from ds2a.pool.account import Account, Health, Ticket
from ds2a.pool.broker import Lease
from ds2a.pool.observer import PoolObserver
from ds2a.pool.pool import AccountPool

__all__ = ["Account", "AccountPool", "Health", "Lease", "PoolObserver", "Ticket"]
