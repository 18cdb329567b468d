"""Real peers started by the tests (BIND named, SMTP sinks), usable as pytest plugins."""
