"""Sieve (RFC 5228): users' mail filters, run at local delivery on the primary.

``storage`` keeps each user's scripts and which one is active (shared with ManageSieve, RFC 5804). The parser
and the interpreter live beside it; a script that does not parse, or fails while it runs, keeps the message in
INBOX (RFC 5228 §2.10.6 implicit keep) and the reason goes to the log.
"""

from appliance.sieve.checker import EXTENSIONS, Script, check, parse
from appliance.sieve.grammar import SieveError

__all__ = ["EXTENSIONS", "Script", "SieveError", "check", "parse"]
