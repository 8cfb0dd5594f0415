"""The durable fallback's files: what an outage leaves survives the process's death.

With `CheckpointerConfig.fallback_path` set (`code-hero serve` on PostgreSQL sets it
by default), the fallback slot is a SQLite file (the ordinary `SqliteBackend`), and
the outage journal and the router's state live in a second SQLite file beside it,
`<path>.entries`, written by `OutageFile`:

    entries   one row per journal entry, in order (`seq`), quarantined ones flagged,
              each a pickled entry (`dump_entry`)
    threads   the threads the outage left to the fallback: local (born in it) or
              fallback (its newest checkpoints there)
    state     when the outage began, the runs the primary refused, the primary's name

A write is acknowledged only once its entry is committed here (WAL, synchronous =
NORMAL: a commit survives the process's death, not a power loss), so a process
that dies during an outage leaves every write it acknowledged behind, and the
next process with the same configuration loads it (`FallbackRouter.open`) and
copies it into the primary.

The journal's file is written on the event loop's thread through the stdlib's
sqlite3, not through the fallback's aiosqlite connection: an entry is committed
in the same synchronous step that appends it to the in-memory journal (no await
between the write's acknowledgement and its entry), and a second connection on
the data file would wait for the aiosqlite one's write lock while holding the
loop that connection needs. A commit without an fsync costs tens of microseconds;
the WAL's checkpoints, which copy it into the file and sync it, run on a thread of
their own (`WalCheckpointer`), never inside a commit on the loop.

Entries are pickled: checkpoints carry arbitrary channel values, and a journal
entry holds records, enums and times the saver's serde would not give back as
they were; the file is this process's own (mode 0600, locked), written and read
by the same code. The maps entries share (`copied`, `refused`) are left out and
joined again at load.

What a start cannot read stops nothing: an entry that fails to unpickle (a graph
module's class before the graphs load, an entry class of another version) stays in
the file, held with its thread's later entries (`Journal.attach`, `retry_held`); the
copies of threads' rows loaded here replay as late copies (the dead process may have
copied them back, other replicas moved on since). A journal file that is not a
database is moved aside (`<name>.corrupt-<time>`) and a fresh one started. Its
database is compared by identity (`same_database`), not by the URL's spelling.
A state row this process cannot unpickle stops nothing either: it is named in a
WARNING and left in the file; an unreadable outage start resumes an outage of
unknown start, and a file whose database cannot be named is left alone while it
holds entries (`UnreadableState`).

One process per file: an flock on `<name>.entries-lock`, held until the file is
closed, which the kernel drops when the process dies (not SQLite's exclusive
locking mode: it would keep out the checkpoints' own connection). A process that
finds the file locked takes the next name (`<stem>-2<suffix>`, ...), so replicas on
one machine each have their own. A restarted one takes first a free file holding
what a dead one of its database left (`orphan`), else the first free name; the
other files a dead process left are adopted by the live servers (`adoption.py`),
whichever takes the file's lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import pickle
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from uuid import UUID

from code_hero.errors import ConfigurationError
from code_hero.persistence import entries as entry_kinds
from code_hero.persistence.entries import Entry, Leases, Refusal
from code_hero.persistence.walcheckpoints import WalCheckpointer

__all__ = [
    "FallbackFileBusyError",
    "Loaded",
    "OutageFile",
    "UnreadableState",
    "dump_entry",
    "load_entry",
    "same_database",
    "siblings",
    "waiting",
]

log = logging.getLogger(__name__)

# Names tried after the configured one when each is held by a live process.
MAX_FILES = 32
# How long a claim waits out another process's look at a file (`_flock`): one read.
_LOOK_WAIT = 2.0
# What a commit adds to the WAL besides an entry's body (a page), for `WalCheckpointer`.
_PAGE = 4096
# Fields that entries share with the journal or the router (joined again at load).
_SHARED = ("copied", "refused", "leased")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        seq INTEGER PRIMARY KEY, thread_id TEXT NOT NULL, body BLOB NOT NULL,
        quarantined INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT)""",
    "CREATE INDEX IF NOT EXISTS entries_thread ON entries (thread_id)",
    """CREATE TABLE IF NOT EXISTS threads (
        thread_id TEXT NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (thread_id, kind))""",
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
)


class FallbackFileBusyError(ConfigurationError):
    """Every fallback file name is held by another live process."""


class UnreadableState(Exception):
    """A state row of the journal's file this process cannot unpickle."""

    def __init__(self, key: str, error: str) -> None:
        super().__init__(f"state {key!r}: {error}")
        self.key = key
        self.error = error


# What a state row this process cannot read costs (`OutageFile._unreadable`).
_STATE_LOST = {
    "outage": "an outage is taken to be under way since an unknown time: resumed, and "
    "copied back as soon as the database answers",
    "refused": "runs whose checkpoints the database refused may end with their own "
    "status there instead of ERROR",
    "leased": "a late copy cannot end the runs an earlier copy put in the database "
    "unfinished: they end when their leases lapse and another executor resumes them",
    "leased_threads": "the leases of a deleted thread's runs are forgotten with them later",
    "primary": "the database whose outage the file holds is unknown",
}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:300]


def dump_entry(entry: Entry) -> bytes:
    """An entry as bytes: its kind and fields, without the maps it shares."""
    assert is_dataclass(entry)
    values = {f.name: getattr(entry, f.name) for f in fields(entry) if f.name not in _SHARED}
    if "config" in values:  # a checkpoint's: LangGraph's runtime rides in it too
        values["config"] = _portable(values["config"])
    return pickle.dumps((type(entry).__name__, values), protocol=pickle.HIGHEST_PROTOCOL)


def load_entry(
    body: bytes,
    *,
    copied: dict[str, int],
    refused: Mapping[str, Refusal],
    leased: Leases | None = None,
) -> Entry:
    """An entry from `dump_entry`'s bytes, sharing `copied`, `refused` and `leased` again."""
    name, values = pickle.loads(body)  # this process's own locked file
    kind = getattr(entry_kinds, name)
    names = {f.name for f in fields(kind)}
    if "copied" in names:
        values["copied"] = copied
    if "refused" in names:
        values["refused"] = refused
    if "leased" in names and leased is not None:
        values["leased"] = leased
    entry: Entry = kind(**values)
    return entry


# What a saver reads of a checkpoint's config: its keys' plain values (the stock savers'
# `get_checkpoint_metadata` takes str, int, float and bool ones; ids may be UUIDs).
_PLAIN = (str, int, float, bool, type(None), UUID)


def _portable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's config without what only the process that ran it holds (LangGraph's
    stream writers, callbacks, the runtime): the keys a saver reads, plain values."""
    return {
        part: {
            k: v
            for k, v in (config.get(part) or {}).items()
            if not k.startswith("__") and isinstance(v, _PLAIN)
        }
        for part in ("configurable", "metadata")
        if part in config
    }


@dataclass
class Loaded:
    """What a dead process's outage left: entries in order, the quarantine, state."""

    entries: list[tuple[int, bytes]]
    quarantined: list[tuple[int, bytes, int, str]]
    local_threads: set[str]
    fallback_threads: set[str]
    state: dict[str, Any]
    thread_of: dict[int, str] = field(default_factory=dict)  # each entry's thread, by seq

    @property
    def empty(self) -> bool:
        """True when nothing waits for the primary."""
        return not self.entries and not self.quarantined


class OutageFile:
    """The journal's file: entries, the outage's threads and state, held by one process."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: int) -> None:
        self.path = path  # the fallback's data file; the journal is `<path>.entries`
        self._conn = conn
        self._lock = lock  # the descriptor holding the file's lock (`_lock`)
        self.checkpoints = WalCheckpointer(_journal(path))

    @property
    def data_path(self) -> str:
        """The fallback's SQLite file (the `SqliteBackend` of the fallback slot)."""
        return str(self.path)

    @classmethod
    def claim(cls, path: str, primary: str) -> OutageFile:
        """Lock the first free file of `path`'s names that holds no other database's
        outage; FallbackFileBusyError when every name is held. A relative `path` (the
        default is one) is taken in the working directory of the start, and the file is
        named absolutely from then on: in logs, and in SQLite's URIs. A free file holding
        a dead process's outage of `primary` comes first: a restart resumes it whole (its
        threads served from it meanwhile), not an empty name beside it."""
        base = Path(path).absolute()
        for candidate in _names(base):
            # Quiet: a file left alone is named by the look at the names below.
            found = cls.orphan(candidate, primary, left=_quiet)
            if found is not None:
                _warn_waiting(base, candidate, primary)
                return found
        held: list[str] = []
        for candidate in _names(base):
            locked = _lock(candidate)
            if locked is None:
                held.append(str(candidate))
                continue
            found = cls(candidate, *locked)
            try:
                taken = found._take(primary)
            except BaseException:  # a full disk, an I/O error: the lock and thread go too
                found.close()
                raise
            if not taken:
                found.close()
                continue
            _warn_waiting(base, candidate, primary)
            return found
        raise FallbackFileBusyError(
            f"every fallback file name of CODE_HERO_FALLBACK_PATH={path} is held by "
            f"another process or another database's outage ({MAX_FILES} tried, "
            f"e.g. {held[:2]}): set CODE_HERO_FALLBACK_PATH to a file of this server's own"
        )

    @classmethod
    async def claim_off_loop(cls, path: str, primary: str) -> OutageFile:
        """`claim` on a thread: it may wait out another server's look at a name
        (`_flock`), which the loop may be what ends. Cancelled meanwhile, the file the
        thread goes on to claim is released, not left locked for this process's life."""
        claiming = asyncio.ensure_future(asyncio.to_thread(cls.claim, path, primary))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            claiming.add_done_callback(_release)
            raise

    def _take(self, primary: str) -> bool:
        """Make this locked file `primary`'s; False (left alone) when it holds the outage
        writes of another database, or of one this version cannot name."""
        try:
            owner = self.state("primary")
        except UnreadableState:
            if not self.load().empty:  # whose outage it holds is unknown: kept
                log.warning(
                    "fallback file %s holds outage writes of a database this process "
                    "cannot name: left alone; copy them back with the version that "
                    "wrote it, or move the file away",
                    self.path,
                )
                return False
            owner = None  # nothing waits in it: started afresh
        same = owner is not None and same_database(owner, primary)
        if owner is not None and not same and not self.load().empty:
            log.warning(
                "fallback file %s holds the outage writes of another database (%s): "
                "left alone; start a server on that database with this file to copy "
                "them back",
                self.path,
                owner,
            )
            return False
        if not same:  # new, or another database's with nothing waiting
            self.reset(primary)
        elif owner != primary:  # the same database named another way
            self.set_state("primary", primary)
        return True

    @classmethod
    def orphan(
        cls, path: Path, primary: str, *, left: Callable[[Path, str], None] | None = None
    ) -> OutageFile | None:
        """The file at `path`, locked, when a process that is gone left outage entries of
        `primary` in it; None when there is no such file, a live process holds it, or it
        waits for nothing. One that is another database's, another user's or unreadable
        is left alone too, and `left` told why (by default, a WARNING)."""
        journal = _journal(path)
        if not waiting(journal):  # nothing there, or held by a live process
            return None
        tell = left or _left_alone
        try:
            _refuse_foreign(path, journal)
        except ConfigurationError as exc:
            tell(path, str(exc))
            return None
        lock = _flock(_lock_file(journal))
        if lock is None:  # taken meanwhile by another process
            return None
        try:
            conn = _open(journal)
        except sqlite3.Error as exc:
            os.close(lock)
            tell(path, f"its journal cannot be opened ({exc})")
            return None
        found = cls(path, conn, lock)
        try:
            owner = found.state("primary")
            if owner is not None and same_database(owner, primary) and found.counts()[0]:
                if owner != primary:  # the same database named another way
                    found.set_state("primary", primary)
                return found
        except (sqlite3.Error, UnreadableState) as exc:
            tell(path, f"its journal cannot be read ({exc})")
        else:
            if owner is not None and not same_database(owner, primary):
                tell(path, f"it holds the outage writes of another database ({owner})")
        found.close()
        return None

    def counts(self) -> tuple[int, int]:
        """The entries waiting in the file (quarantined ones too), and their threads."""
        [(entries, threads)] = self._conn.execute(
            "SELECT count(*), count(DISTINCT thread_id) FROM entries"
        ).fetchall()
        return int(entries), int(threads)

    def reset(self, primary: str) -> None:
        """Start afresh for `primary`: no outage, no threads, no entries (the fallback's
        data file is emptied at open, nothing waiting for it)."""
        with self._conn:
            for table in ("entries", "threads", "state"):
                self._conn.execute(f"DELETE FROM {table}")
            self._conn.execute("INSERT INTO state VALUES ('primary', ?)", (pickle.dumps(primary),))

    def close(self) -> None:
        """Release the file: its checkpoints stop, then its connection and lock go (each
        step whatever the one before raised: a lock kept by a failed close would keep
        the file from every other server until this process ends)."""
        try:
            self.checkpoints.close()
        finally:
            try:
                self._conn.close()
            finally:
                os.close(self._lock)

    def clear_entries(self) -> None:
        """Forget every entry (the journal holds none: left by a removal that failed)."""
        with self._conn:
            self._conn.execute("DELETE FROM entries")

    def give_back_space(self) -> None:
        """Compact the emptied file and truncate its WAL (called on a thread of its own:
        the connection allows it, and an entry added meanwhile waits for it)."""
        self._conn.execute("VACUUM")
        # The cut on the checkpointer's thread: on this connection it would wait for a
        # reader (its busy timeout), holding the loop's commits up meanwhile.
        self.checkpoints.cut()

    # ------------------------------------------------------------ entries
    def add(self, entry: Entry) -> int:
        """Commit an entry at the tail; its seq."""
        body = dump_entry(entry)
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO entries (thread_id, body) VALUES (?, ?)", (entry.thread_id, body)
            )
        self.checkpoints.wrote(len(body))
        seq = cur.lastrowid
        assert seq is not None
        return seq

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget entries replayed (or dropped), in one commit."""
        rows = [(s,) for s in seqs]
        if rows:
            with self._conn:
                self._conn.executemany("DELETE FROM entries WHERE seq = ?", rows)
            self.checkpoints.wrote(_PAGE * len(rows))

    def quarantine(self, seq: int, failures: int, last_error: str) -> None:
        """Mark an entry quarantined, with its failures so far."""
        with self._conn:
            self._conn.execute(
                "UPDATE entries SET quarantined = 1, failures = ?, last_error = ? WHERE seq = ?",
                (failures, last_error, seq),
            )
        self.checkpoints.wrote(_PAGE)

    def remove_thread(self, thread_id: str) -> None:
        """Forget every entry of a thread, and that the outage left it to the fallback."""
        with self._conn:
            self._conn.execute("DELETE FROM entries WHERE thread_id = ?", (thread_id,))
            self._conn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))
        self.checkpoints.wrote(_PAGE)

    def replace_thread(self, entry: Entry) -> int:
        """Forget every entry of the entry's thread, and that the outage left it to the
        fallback, and commit the entry at the tail, all in one commit (a deletion: a
        process killed at any point leaves the thread's entries or its deletion); its seq."""
        body = dump_entry(entry)
        with self._conn:
            self._conn.execute("DELETE FROM entries WHERE thread_id = ?", (entry.thread_id,))
            self._conn.execute("DELETE FROM threads WHERE thread_id = ?", (entry.thread_id,))
            cur = self._conn.execute(
                "INSERT INTO entries (thread_id, body) VALUES (?, ?)", (entry.thread_id, body)
            )
        self.checkpoints.wrote(len(body) + _PAGE)
        seq = cur.lastrowid
        assert seq is not None
        return seq

    # ------------------------------------------------------------ threads and state
    def note_thread(self, thread_id: str, kind: str) -> None:
        """The outage left this thread to the fallback ("local" or "fallback")."""
        with self._conn:
            self._conn.execute("INSERT OR IGNORE INTO threads VALUES (?, ?)", (thread_id, kind))
        self.checkpoints.wrote(_PAGE)

    def forget_thread(self, thread_id: str) -> None:
        """The thread is no longer the fallback's."""
        with self._conn:
            self._conn.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))
        self.checkpoints.wrote(_PAGE)

    def set_state(self, key: str, value: Any) -> None:
        """Commit one piece of the router's state."""
        body = pickle.dumps(value)
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, body))
        self.checkpoints.wrote(len(body) + _PAGE)

    def save_outage(self, outage: Any, threads: set[str]) -> None:
        """When the outage under way began (None: none), and the threads left to the
        fallback now but `threads` forgotten, in one commit."""
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO state VALUES ('outage', ?)", (pickle.dumps(outage),)
            )
            if threads:
                self._conn.execute(
                    "DELETE FROM threads WHERE thread_id NOT IN (SELECT value FROM json_each(?))",
                    (json.dumps(sorted(threads)),),
                )
            else:
                self._conn.execute("DELETE FROM threads")
        self.checkpoints.wrote(_PAGE)

    def state(self, key: str) -> Any:
        """One piece of the router's state (None when unset); `UnreadableState` when this
        process cannot unpickle it."""
        row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return pickle.loads(row[0])  # this process's own locked file
        except Exception as exc:
            raise UnreadableState(key, _describe(exc)) from exc

    def load(self) -> Loaded:
        """Everything the file holds, entries in their order."""
        entries: list[tuple[int, bytes]] = []
        quarantined: list[tuple[int, bytes, int, str]] = []
        thread_of: dict[int, str] = {}
        for seq, thread_id, body, flagged, failures, error in self._conn.execute(
            "SELECT seq, thread_id, body, quarantined, failures, last_error FROM entries "
            "ORDER BY seq"
        ):
            thread_of[seq] = thread_id
            if flagged:
                quarantined.append((seq, body, failures, error or ""))
            else:
                entries.append((seq, body))
        threads: dict[str, set[str]] = {"local": set(), "fallback": set()}
        for thread_id, kind in self._conn.execute("SELECT thread_id, kind FROM threads"):
            threads.setdefault(kind, set()).add(thread_id)
        state: dict[str, Any] = {}
        for key, value in self._conn.execute("SELECT key, value FROM state").fetchall():
            try:
                state[key] = pickle.loads(value)  # this process's own locked file
            except Exception as exc:
                state.update(self._unreadable(key, _describe(exc)))
        return Loaded(entries, quarantined, threads["local"], threads["fallback"], state, thread_of)

    def _unreadable(self, key: str, error: str) -> dict[str, Any]:
        """A state row this process cannot unpickle (a class renamed by an upgrade, a
        truncated row), as entries are: it stops no start. Logged with what it costs;
        what stands in for it (an outage under way of unknown start: one resumed copies
        back at once, and none is lost), kept in the file meanwhile."""
        meaning = _STATE_LOST.get(key, "it is ignored")
        log.warning(
            "the fallback's journal file %s.entries holds a %r state row this process "
            "cannot read (%s): %s; the row stays in the file until it is written anew",
            self.path,
            key,
            error,
            meaning,
        )
        return {"outage": (None, None)} if key == "outage" else {}


def same_database(a: str, b: str) -> bool:
    """Whether two (redacted) URLs name one database: scheme (postgres is postgresql),
    host, port (5432 by default), database, user and the schema `options` sets
    (`_schema`: its `search_path`, however spelled), as the URL's path or its query
    gives them (libpq takes `host`, `port`, `dbname`, `user` and `options` from the
    query too, the query winning); the other query options (sslmode,
    application_name, ...) and the spelling of the scheme aside. Anything but a
    PostgreSQL URL compares as it is written."""
    return _identity(a) == _identity(b)


# The query parameters that name another server, database or schema (libpq's).
_NAMING = ("host", "hostaddr", "port", "dbname", "user", "options")


def _identity(url: str) -> tuple[Any, ...] | str:
    parsed = urlsplit(url)
    if parsed.scheme not in ("postgres", "postgresql"):
        return url
    try:
        port: Any = parsed.port
    except ValueError:
        return url
    query = dict(parse_qsl(parsed.query, keep_blank_values=True))
    host = query.get("host", parsed.hostname or "")
    port = query.get("port", port) or 5432
    try:
        port = int(port)
    except ValueError:
        return url
    database = query.get("dbname", unquote(parsed.path.lstrip("/")))
    user = query.get("user", parsed.username)
    return (
        "postgresql",
        host.lower() if not host.startswith("/") else host,
        query.get("hostaddr", ""),
        port,
        database,
        user,
        _schema(query.get("options", "")),
    )


def _schema(options: str) -> tuple[str, ...] | None:
    """The `search_path` a libpq `options` string sets (None: none), as the server
    reads it: `-c name=value`, `-cname=value` and `--name=value` alike, the last one
    winning, the name in any case; the other settings (a statement timeout) name no
    database or schema and do not count. Each schema of the path: unquoted, lower-cased
    (PostgreSQL folds it); quoted, kept as written; spaces around the commas aside."""
    settings: dict[str, str] = {}
    words = _option_words(options)
    i = 0
    while i < len(words):
        word = words[i]
        setting = None
        if word == "-c" and i + 1 < len(words):
            i += 1
            setting = words[i]
        elif word.startswith("-c"):
            setting = word[2:]
        elif word.startswith("--"):
            setting = word[2:]
        i += 1
        if setting is not None and "=" in setting:
            name, value = setting.split("=", 1)
            settings[name.strip().lower().replace("-", "_")] = value
    path = settings.get("search_path")
    return None if path is None else tuple(_identifiers(path))


def _option_words(options: str) -> list[str]:
    """`options` split as libpq splits it: at spaces, a backslash escaping the next
    character (a space within a value)."""
    words: list[str] = []
    word: list[str] = []
    chars = iter(options)
    for char in chars:
        if char == "\\":
            word.append(next(chars, ""))
        elif char.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(char)
    if word:
        words.append("".join(word))
    return words


def _identifiers(path: str) -> list[str]:
    """A `search_path` value's schemas: unquoted ones with ASCII letters lower-cased (as
    PostgreSQL folds them in a UTF-8 database), quoted ones kept."""
    names: list[str] = []
    name: list[str] = []
    quoted = False
    i = 0
    while i < len(path):
        char = path[i]
        if quoted:
            if char == '"' and path[i + 1 : i + 2] == '"':
                name.append('"')
                i += 1
            elif char == '"':
                quoted = False
            else:
                name.append(char)
        elif char == '"':
            quoted = True
        elif char == ",":
            names.append("".join(name))
            name = []
        elif not char.isspace():
            name.append(char.lower() if "A" <= char <= "Z" else char)  # ASCII only, as PostgreSQL
        i += 1
    names.append("".join(name))
    return names


def _release(claiming: asyncio.Future[OutageFile]) -> None:
    """Close the file a claim given up on took (`OutageFile.claim_off_loop`)."""
    if not claiming.cancelled() and claiming.exception() is None:
        claiming.result().close()


def _names(base: Path) -> list[Path]:
    """The fallback file names of `base`, in the order `claim` tries them."""
    return [
        base if n == 1 else base.with_name(f"{base.stem}-{n}{base.suffix}")
        for n in range(1, MAX_FILES + 1)
    ]


def waiting(journal: Path, primary: str | None = None) -> int:
    """The entries in a journal file no live process holds (0: none, no such file, held
    by a live process, or unreadable; with `primary`, also when it is another
    database's outage or one this process cannot name); read-only, under a shared lock
    of its lock file (a process taking the file meanwhile waits for nothing: it finds
    the file busy)."""
    if not journal.exists():
        return 0
    try:
        lock = _flock(_lock_file(journal), fcntl.LOCK_SH)
    except OSError:  # a directory this process may not write: not one it can adopt from
        return 0
    if lock is None:  # held by a live process
        return 0
    try:
        conn = sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True, timeout=0)
        try:
            [(count,)] = conn.execute("SELECT count(*) FROM entries").fetchall()
            if count and primary is not None:
                _refuse_foreign(journal)  # its state is a pickle too
                row = conn.execute("SELECT value FROM state WHERE key = 'primary'").fetchone()
                owner = None if row is None else pickle.loads(row[0])
                if not isinstance(owner, str) or not same_database(owner, primary):
                    return 0
        finally:
            conn.close()
    except Exception:  # held by an older version, unreadable, another user's, or its
        return 0  # state cannot be unpickled here: not this process's to name
    finally:
        os.close(lock)
    return int(count)


def siblings(base: Path, taken: Path) -> list[Path]:
    """The other fallback file names of `base` than `taken`, in `claim`'s order."""
    return [other for other in _names(base) if other != taken]


def _warn_waiting(base: Path, taken: Path, primary: str) -> None:
    """Warn of each other fallback file of `base`'s names that no live process holds
    and that holds entries of `primary`'s outage: a dead replica's outage writes, which
    a live server of the same database adopts (`adoption.py`). Another database's is
    named where a start or an adoption looks at it (`_take`, `orphan`)."""
    for other in siblings(base, taken):
        count = waiting(_journal(other), primary)
        if count:
            log.warning(
                "fallback file %s holds %d outage writes of a process that is gone: a "
                "server on the same database adopts the file and copies them into the "
                "database once it answers",
                other,
                count,
            )


def _quiet(path: Path, why: str) -> None:
    pass


def _left_alone(path: Path, why: str) -> None:
    log.warning("fallback file %s is left alone: %s", path, why)


def _journal(path: Path) -> Path:
    """The journal's file of the fallback's data file `path`."""
    return path.with_name(path.name + ".entries")


def _lock_file(journal: Path) -> Path:
    """The file whose lock says a live process holds `journal`."""
    return journal.with_name(journal.name + "-lock")


def _lock(path: Path) -> tuple[sqlite3.Connection, int] | None:
    """The journal's connection of `path` and the descriptor holding its lock; None when
    another process holds it.

    The lock is an flock on `<journal>-lock`, a file of its own: closing a descriptor
    of the journal itself would drop SQLite's own locks on it (POSIX locks are the
    process's, per file). Not SQLite's exclusive locking mode: that keeps every other
    connection out, the one checkpointing the WAL off the loop too (`WalCheckpointer`)."""
    journal = _journal(path)
    journal.parent.mkdir(parents=True, exist_ok=True)
    _refuse_foreign(path, journal)
    for file in (path, journal):  # the process's own: -wal and -shm take the mode too
        os.close(os.open(file, os.O_RDWR | os.O_CREAT, 0o600))
    lock = _flock(_lock_file(journal))
    if lock is None:
        return None
    try:
        return _open(journal), lock
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):
            os.close(lock)
            if "locked" in str(exc) or "busy" in str(exc):  # an older version's lock
                return None
            raise
        # Not a database (a truncated copy, another program's file): kept for the
        # operator, never read again; this process starts with a fresh file.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = [path, journal, *(journal.with_name(journal.name + s) for s in ("-wal", "-shm"))]
        moved = []
        for file in aside:
            if file.exists():
                target = file.with_name(f"{file.name}.corrupt-{stamp}")
                file.rename(target)
                moved.append(str(target))
        log.error(
            "the fallback's journal file %s cannot be read (%s): moved aside as %s with "
            "its data file; outage writes it may hold are not copied back (inspect them "
            "with sqlite3); starting with a fresh file",
            journal,
            exc,
            ", ".join(moved),
        )
        for file in (path, journal):
            os.close(os.open(file, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            return _open(journal), lock
        except BaseException:
            os.close(lock)
            raise


def _flock(file: Path, kind: int = fcntl.LOCK_EX) -> int | None:
    """A descriptor of `file` (made, mode 0600) holding its flock; None when another
    holds it. The kernel drops it when the process dies.

    An exclusive lock refused while no process holds one is a look (`waiting`, another
    server's adoption: a shared lock for a read of the journal), not a live holder: it
    is asked again until the look ends, up to `_LOOK_WAIT` seconds. Otherwise a replica
    starting in that instant would take the name for a live one's and its next name.
    Looks that overlap without a gap for that long still cost the name (flock queues
    no one). Blocking: called off the loop (`claim` by the manager, `orphan` by the
    adoption's scan)."""
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + _LOOK_WAIT
    try:
        while True:
            try:
                fcntl.flock(fd, kind | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if kind != fcntl.LOCK_EX or time.monotonic() > deadline or _held(fd):
                    os.close(fd)
                    return None
            time.sleep(0.002)
    except BaseException:
        os.close(fd)
        raise


def _held(fd: int) -> bool:
    """Whether another process holds the exclusive flock of `fd`'s file (a shared lock is
    then refused too); `fd` is left unlocked."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _open(journal: Path) -> sqlite3.Connection:
    """The loop's connection of the journal file (its lock held): WAL, commits without an
    fsync each, and no automatic checkpoint: a thread of its own checkpoints
    (`WalCheckpointer`). It waits for a lock (the checkpointer's TRUNCATE past its limit,
    an operator's sqlite3) up to its busy timeout rather than leave an entry unfiled."""
    conn = sqlite3.connect(journal, timeout=5, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    conn.isolation_level = "DEFERRED"  # `with conn` commits each step from here on
    return conn


def _refuse_foreign(*files: Path) -> None:
    """ConfigurationError for an existing file another user may have written: one not
    this user's, or writable by its group or others. The journal's entries are pickles
    (loading them runs code) and the data file is the fallback's: neither is loaded.
    Each file's `-wal`, `-shm` and `-journal` too: SQLite reads the rows a `-wal`
    holds as the file's own, and replays a leftover rollback journal into the file at
    its first open, however either came there."""
    ends = ("", "-wal", "-shm", "-journal")
    for file in (f.with_name(f.name + end) for f in files for end in ends):
        try:
            found = os.stat(file)
        except FileNotFoundError:
            continue
        foreign = found.st_uid != os.geteuid()
        if foreign or found.st_mode & 0o022:
            why = "owned by another user" if foreign else f"mode {found.st_mode & 0o777:o}"
            raise ConfigurationError(
                f"refusing the fallback file {file}: {why}, others may have written it "
                "(its outage entries would be unpickled); check what it holds, then make "
                f"it this user's with mode 0600 (chown, chmod 600) or remove it, or set "
                "CODE_HERO_FALLBACK_PATH to another file"
            )
