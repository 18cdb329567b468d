"""The TLS policies of outbound delivery: MTA-STS (RFC 8461), DANE (RFC 7672), and the TLS-RPT reports
(RFC 8460) of what they saw."""
