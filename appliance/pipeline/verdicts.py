"""The names of the verdicts that checks leave for the checks of later stages.

A verdict is set with ``note(verdicts=...)`` and read from ``Client.verdicts`` (the whole connection) or
``Transaction.verdicts`` (one message). The checks of different rooms agree on these names only.
"""

from __future__ import annotations

# Connection (Client.verdicts), set at CONNECT by screening/: the DNSWL zones that list the client
# (tuple[str, ...], empty when none) and the DNSBL score the listings add up to (float).
DNSWL = "dnswl"
DNSBL_SCORE = "dnsbl.score"
# Connection, set at CONNECT by screening/ on the MX listener when the client is to take the pregreet test: the
# test (screening.pregreet.PregreetTest) the SMTP engine runs at the greeting.
PREGREET = "pregreet"

# Connection, set by senderauth/: the client's reverse DNS (RFC 8601 §3 "iprev", RFC 8601 §2.7.3): "pass" when a
# PTR name of the client's address resolves back to it, "fail", "temperror" or "permerror"; and the
# forward-confirmed name when it passed (str, else None).
IPREV = "iprev"
IPREV_NAME = "iprev.name"

# Transaction (Transaction.verdicts), set at MAIL by senderauth/: the SPF result of the MAIL FROM identity
# (RFC 7208 §2.6: "pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"), and of HELO.
SPF = "spf"
SPF_HELO = "spf.helo"
