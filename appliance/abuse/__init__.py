"""Abuse detection on every public listener: per-client limits (as Postfix's anvil), dictionary-attack
tarpits and the bans they lead to."""
