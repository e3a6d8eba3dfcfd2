"""PAWTRAIT_DATABASE_URL, parsed once: which database, and how to name it without its password.

The password may sit in two places: `user:password@` and libpq's `?password=` (or
`sslpassword=`), which SQLAlchemy's `render_as_string(hide_password=True)` leaves in. Every
description of the database (logs, errors, `pawtrait doctor`) comes from `describe`, which
masks both; `passwords` tells the log scrubber what to mask in other text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True, repr=False)
class DatabaseUrl:
    """A SQLite file or a PostgreSQL database; repr() and str() never show the password."""

    url: URL  # SQLAlchemy's, with `postgres://` spelled `postgresql://`

    @classmethod
    def parse(cls, raw: str) -> DatabaseUrl:
        """`raw` if it is sqlite:///PATH or postgresql://... (postgres:// too), else ValueError."""
        text = raw.strip()
        scheme, separator, rest = text.partition("://")
        if not separator:
            raise ValueError("a database URL looks like sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE")
        if scheme.lower() == "postgres":
            text = f"postgresql://{rest}"
        try:
            url = make_url(text)
        except ArgumentError as error:
            raise ValueError(str(error)) from None
        if url.get_backend_name() not in BACKENDS:
            raise ValueError(f"unsupported database {url.get_backend_name()!r}: use sqlite:///PATH or postgresql://...")
        return cls(url)

    @classmethod
    def sqlite_file(cls, path: Path) -> DatabaseUrl:
        """The SQLite file at `path` (made absolute, so a later change of directory cannot move it)."""
        return cls(URL.create("sqlite", database=str(Path(path).resolve())))

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.url.get_backend_name()

    @property
    def driver_url(self) -> URL:
        """The URL Pawtrait connects with: aiosqlite or asyncpg, libpq's `sslmode=` as asyncpg's `ssl=`
        (so URLs copied from a provider's dashboard work as they are)."""
        if self.backend == "sqlite":
            return self.url.set(drivername="sqlite+aiosqlite")
        query = dict(self.url.query)
        if "sslmode" in query:
            query["ssl"] = query.pop("sslmode")
        return self.url.set(drivername="postgresql+asyncpg", query=query)

    @property
    def text(self) -> str:
        """The whole URL, password included: for a driver or a child process, never for printing."""
        return self.url.render_as_string(hide_password=False)

    def passwords(self) -> list[str]:
        """Every password the URL holds (user:password@ and ?password= / ?sslpassword=)."""
        found = [self.url.password] if self.url.password else []
        for key, value in self.url.query.items():
            if "password" in key.lower():
                found += [value] if isinstance(value, str) else list(value)
        return [password for password in found if password]

    def describe(self) -> str:
        """The URL Pawtrait connects with, every password masked: for logs, errors and `pawtrait doctor`."""
        url = self.driver_url
        query = {key: MASK if "password" in key.lower() else value for key, value in url.query.items()}
        return url.set(query=query).render_as_string(hide_password=True).replace(quote(MASK, safe=""), MASK)

    __str__ = describe

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.describe()!r})"
