"""Signing of what the fleet sends: DKIM signatures (rsa-sha256, ed25519-sha256) of outgoing mail, ARC seals of
forwarded mail, and the life of the signing keys (selectors published, switched and retired without a gap)."""
