"""The spool file's tables (design.md, "The spool").

``submissions`` waiting for Klaviyo with their progress and lease,
``dead_letters``, ``people`` and ``profile_marks`` for per-person order,
``intakes`` (how far each process's intake was moved), ``senders`` (those
running), ``pauses``, ``rate_events``, ``counters``, ``housekeeping``
turns, ``totals`` kept by triggers (the dead letters' bytes), the file's own
random ``spool_file`` id, and ``carried``: which rows of a replaced file
were carried into this one (so that a second process carrying the same
old file neither brings back what was delivered since nor sends a step
twice). Created
if missing by every process that opens the file, in one transaction.
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    payload TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS submissions_due ON submissions (account, due_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    payload TEXT NOT NULL,
    progress TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS senders (
    owner TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    heartbeat_at REAL NOT NULL,
    account TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pauses (
    account TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_log (
    account TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_log_at ON rate_log (account, endpoint, at);
CREATE TABLE IF NOT EXISTS people (
    submission_id TEXT NOT NULL,
    person TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (person, submission_id)
);
CREATE INDEX IF NOT EXISTS people_submission ON people (submission_id);
CREATE TABLE IF NOT EXISTS profile_marks (
    person TEXT NOT NULL,
    path TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (person, path)
);
CREATE TABLE IF NOT EXISTS housekeeping (
    task TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS intakes (
    name TEXT PRIMARY KEY,
    moved_through INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (account, name)
);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_dead_at ON dead_letters (dead_at);
CREATE TABLE IF NOT EXISTS spool_file (
    id TEXT PRIMARY KEY
);
INSERT INTO spool_file (id) SELECT lower(hex(randomblob(8)))
    WHERE NOT EXISTS (SELECT 1 FROM spool_file);
CREATE TABLE IF NOT EXISTS carried (
    old_file TEXT NOT NULL,
    id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (old_file, id)
);
"""

# Columns renamed since a spool file may have been made: (table, old, new).
# A file's tables are brought up to date where the schema is applied.
RENAMED_COLUMNS = (
    ("people", "accepted", "accepted_at"),
    ("profile_marks", "accepted", "accepted_at"),
)
# Columns added since: (table, column, its declaration).
ADDED_COLUMNS = (
    ("senders", "account", "TEXT NOT NULL DEFAULT ''"),
)

# Dead letters have a budget of their own (dead_letter_max_size): their bytes
# are kept in ``totals`` by triggers, so that neither the request path nor a
# claim ever has to add them up. A file from before the totals is counted
# once, when first opened by this version. Statements with BEGIN ... END,
# so not split on ";" as _SCHEMA is.
TOTALS = (
    "INSERT INTO totals (name, value) SELECT 'dead_bytes', "
    "(SELECT coalesce(sum(length(payload) + length(progress) + length(error)), 0) "
    "FROM dead_letters) WHERE NOT EXISTS (SELECT 1 FROM totals WHERE name = 'dead_bytes')",
    "CREATE TRIGGER IF NOT EXISTS dead_letter_added AFTER INSERT ON dead_letters BEGIN "
    "INSERT INTO totals (name, value) VALUES "
    "('dead_bytes', length(NEW.payload) + length(NEW.progress) + length(NEW.error)) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value; END",
    "CREATE TRIGGER IF NOT EXISTS dead_letter_removed AFTER DELETE ON dead_letters BEGIN "
    "UPDATE totals SET value = "
    "max(0, value - (length(OLD.payload) + length(OLD.progress) + length(OLD.error))) "
    "WHERE name = 'dead_bytes'; END",
)
# A row put off by Klaviyo failing (5xx, or no answer at all: a timeout, no
# connection), which comes due at once when Klaviyo answers again.
