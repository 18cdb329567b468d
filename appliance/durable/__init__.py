"""The ground floor's durable I/O: whole writes, fsync, the group flush, SQLite; it imports nothing above it."""
