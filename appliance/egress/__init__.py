"""The outgoing gateway's pool of sending addresses: which address each connection leaves from, the signals that
an address is blacklisted (DNSBL listings, rejection texts), its suspension and its return."""
