"""Sender authentication on the way in: SPF, DKIM, DMARC and ARC verification, one RFC 8601
Authentication-Results header, and the policy that follows from them."""
