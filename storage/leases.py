"""Named leases: one holder at a time for work that several hosts could start at once.

Building the prior-preservation images of a class is the example: two hosts training cats
at the same moment must not both draw 100 cats. The holder renews its lease while it works;
if it dies, the lease expires on the database's clock and another host takes over.
"""

from __future__ import annotations

from sqlalchemy import delete, or_, update

from storage.db import Queries
from storage.dialects import insert_for, utc_now, utc_now_plus
from storage.schema import leases


async def try_acquire(db: Queries, name: str, holder: str, ttl_s: float) -> bool:
    """Take (or renew) the lease `name` for `ttl_s` seconds; False while someone else holds it."""
    statement = (
        insert_for(db.dialect, leases)
        .values(name=name, holder=holder, expires_at=utc_now_plus(ttl_s))
        .on_conflict_do_update(
            index_elements=[leases.c.name],
            set_={"holder": holder, "expires_at": utc_now_plus(ttl_s)},
            where=or_(leases.c.holder == holder, leases.c.expires_at < utc_now()),
        )
        .returning(leases.c.holder)
    )
    return await db.one(statement) is not None


async def renew(db: Queries, name: str, holder: str, ttl_s: float) -> bool:
    """Extend a lease we hold; False if it expired and someone else took it meanwhile."""
    result = await db.execute(
        update(leases).where(leases.c.name == name, leases.c.holder == holder).values(expires_at=utc_now_plus(ttl_s))
    )
    return result.rowcount == 1


async def release(db: Queries, name: str, holder: str) -> None:
    await db.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))
