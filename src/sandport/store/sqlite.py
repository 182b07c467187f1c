"""SQLite store (WAL mode, versioned schema): the embedded default.

Queries run on the event loop thread: with WAL and ``synchronous=NORMAL`` they take
microseconds, less than a hop to a worker thread would.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import SandboxRecord

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit a
# released entry, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE api_keys (
        key_hash TEXT PRIMARY KEY,
        team_id TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL,
        status TEXT NOT NULL,
        image_name TEXT NOT NULL,
        vcpus INTEGER NOT NULL,
        mem_mib INTEGER NOT NULL,
        disk_size_mib INTEGER NOT NULL,
        timeout_minutes INTEGER NOT NULL,
        token TEXT NOT NULL,
        token_expires_at REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        runtime TEXT NOT NULL,
        env TEXT NOT NULL,
        started_at REAL,
        ended_at REAL,
        expires_at REAL,
        close_reason TEXT
    );
    CREATE INDEX sandboxes_by_team ON sandboxes (team_id, status, created_at);
    CREATE INDEX sandboxes_by_expiry ON sandboxes (status, expires_at);
    """,
    """
    ALTER TABLE sandboxes ADD COLUMN exposed_ports TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE grants (
        grant_hash TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        port INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    CREATE INDEX grants_by_expiry ON grants (expires_at);
    """,
    """
    ALTER TABLE sandboxes ADD COLUMN closed_ports TEXT NOT NULL DEFAULT '[]';
    """,
    """
    ALTER TABLE sandboxes ADD COLUMN on_timeout TEXT NOT NULL DEFAULT 'stop';
    """,
    """
    ALTER TABLE sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE sandboxes ADD COLUMN older_tokens TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE sandboxes ADD COLUMN idle_timeout_s INTEGER;
    ALTER TABLE sandboxes ADD COLUMN on_idle TEXT NOT NULL DEFAULT 'pause';
    ALTER TABLE sandboxes ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE console_signed_out (nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL);
    """,
    """
    ALTER TABLE sandboxes ADD COLUMN pids_limit INTEGER NOT NULL DEFAULT 1024;
    ALTER TABLE sandboxes ADD COLUMN intent TEXT;
    ALTER TABLE sandboxes ADD COLUMN retain_until REAL;
    ALTER TABLE sandboxes ADD COLUMN port_generation INTEGER NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE sandboxes ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
    """,
)

_COLUMNS = [f.name for f in fields(SandboxRecord)]


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        os.chmod(self.path, 0o600)  # it holds runtime tokens
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the store at {self.path} has schema version {version}, newer than this "
                f"sandport ({len(MIGRATIONS)}); upgrade sandport"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def team_id(self) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key='team_id'").fetchone()
        if row:
            return str(row[0])
        team = "team_" + secrets.token_hex(8)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('team_id', ?)", (team,))
        return str(self.db.execute("SELECT value FROM meta WHERE key='team_id'").fetchone()[0])

    async def add_api_key(self, key_hash: str, team_id: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO api_keys VALUES (?, ?, strftime('%s','now'))",
            (key_hash, team_id),
        )

    async def api_key_team(self, key_hash: str) -> str | None:
        row = self.db.execute(
            "SELECT team_id FROM api_keys WHERE key_hash=?", (key_hash,)
        ).fetchone()
        return str(row[0]) if row else None

    async def count_api_keys(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM api_keys").fetchone()[0])

    async def insert_sandbox(self, record: SandboxRecord) -> None:
        marks = ", ".join("?" for _ in _COLUMNS)
        self.db.execute(
            f"INSERT INTO sandboxes ({', '.join(_COLUMNS)}) VALUES ({marks})",
            _to_row(record),
        )

    async def update_sandbox(self, record: SandboxRecord) -> None:
        sets = ", ".join(f"{c}=?" for c in _COLUMNS[1:])
        self.db.execute(
            f"UPDATE sandboxes SET {sets} WHERE id=?", (*_to_row(record)[1:], record.id)
        )

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        row = self.db.execute("SELECT * FROM sandboxes WHERE id=?", (sandbox_id,)).fetchone()
        return _from_row(row) if row else None

    async def list_sandboxes(
        self, team_id: str, statuses: tuple[str, ...] | None, offset: int, limit: int
    ) -> tuple[list[SandboxRecord], int]:
        where, params = "team_id=?", [team_id]
        if statuses:
            where += f" AND status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        total = self.db.execute(f"SELECT count(*) FROM sandboxes WHERE {where}", params)
        rows = self.db.execute(
            f"SELECT * FROM sandboxes WHERE {where} ORDER BY created_at DESC, id"
            " LIMIT ? OFFSET ?",
            (*params, limit, offset),
        ).fetchall()
        return [_from_row(r) for r in rows], int(total.fetchone()[0])

    async def sandboxes_after(
        self, team_id: str, statuses: tuple[str, ...], metadata: dict[str, str],
        after: tuple[float, str] | None, limit: int, image: str | None = None,
        started_after: float | None = None,
    ) -> list[SandboxRecord]:
        where = [f"team_id=? AND status IN ({', '.join('?' for _ in statuses)})"]
        params: list[Any] = [team_id, *statuses]
        for key, value in metadata.items():
            where.append("EXISTS (SELECT 1 FROM json_each(sandboxes.metadata)"
                         " WHERE json_each.key=? AND json_each.value=?)")
            params += [key, value]
        if image is not None:
            where.append("image_name=?")
            params.append(image)
        if started_after is not None:
            where.append("started_at >= ?")
            params.append(started_after)
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [after[0], after[0], after[1]]
        rows = self.db.execute(
            f"SELECT * FROM sandboxes WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_from_row(r) for r in rows]

    async def sandboxes_in(self, statuses: tuple[str, ...]) -> list[SandboxRecord]:
        marks = ", ".join("?" for _ in statuses)
        rows = self.db.execute(f"SELECT * FROM sandboxes WHERE status IN ({marks})", statuses)
        return [_from_row(r) for r in rows.fetchall()]

    async def secret(self, name: str) -> bytes:
        key = f"secret:{name}"
        self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                        (key, secrets.token_hex(32)))
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return bytes.fromhex(row[0])

    async def add_grant(self, grant_hash: str, sandbox_id: str, port: int,
                        expires_at: float) -> None:
        self.db.execute("DELETE FROM grants WHERE expires_at < ?", (expires_at - 86400,))
        self.db.execute("INSERT INTO grants VALUES (?, ?, ?, ?, NULL)",
                        (grant_hash, sandbox_id, port, expires_at))

    async def redeem_grant(self, grant_hash: str, sandbox_id: str, port: int,
                           now: float) -> bool:
        row = self.db.execute(
            "UPDATE grants SET used_at=? WHERE grant_hash=? AND sandbox_id=? AND port=?"
            " AND used_at IS NULL AND expires_at > ? RETURNING 1",
            (now, grant_hash, sandbox_id, port, now),
        ).fetchone()
        return row is not None

    async def idle_watched(self) -> list[SandboxRecord]:
        rows = self.db.execute("SELECT * FROM sandboxes WHERE status = 'active'"
                               " AND idle_timeout_s IS NOT NULL")
        return [_from_row(r) for r in rows.fetchall()]

    async def sign_out(self, nonce: str, expires_at: float, now: float) -> None:
        self.db.execute("DELETE FROM console_signed_out WHERE expires_at < ?", (now,))
        self.db.execute("INSERT OR IGNORE INTO console_signed_out VALUES (?, ?)",
                        (nonce, expires_at))

    async def signed_out(self, nonce: str) -> bool:
        row = self.db.execute("SELECT 1 FROM console_signed_out WHERE nonce=?", (nonce,))
        return row.fetchone() is not None

    async def expired_sandboxes(self, now: float) -> list[SandboxRecord]:
        rows = self.db.execute(
            "SELECT * FROM sandboxes WHERE status IN ('active', 'paused') AND expires_at <= ?",
            (now,)
        )
        return [_from_row(r) for r in rows.fetchall()]

    async def files_due(self, now: float) -> list[SandboxRecord]:
        rows = self.db.execute("SELECT * FROM sandboxes WHERE retain_until <= ?", (now,))
        return [_from_row(r) for r in rows.fetchall()]


_JSON_COLUMNS = ("env", "exposed_ports", "network", "closed_ports", "older_tokens",
                 "metadata")


def _to_row(record: SandboxRecord) -> tuple[Any, ...]:
    return tuple(
        json.dumps(getattr(record, c)) if c in _JSON_COLUMNS else getattr(record, c)
        for c in _COLUMNS
    )


def _from_row(row: sqlite3.Row) -> SandboxRecord:
    values = {c: row[c] for c in _COLUMNS}
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    values["exposed_ports"] = {int(p): bool(a) for p, a in values["exposed_ports"].items()}
    values["closed_ports"] = tuple(int(p) for p in values["closed_ports"])
    values["auto_resume"] = bool(values["auto_resume"])
    values["suspended"] = bool(values["suspended"])
    values["older_tokens"] = tuple((str(h), float(e)) for h, e in values["older_tokens"])
    return SandboxRecord(**values)
