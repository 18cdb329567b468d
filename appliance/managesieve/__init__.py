"""ManageSieve (RFC 5804): the protocol mail clients and Roundcube use to upload, check and activate a user's
Sieve scripts, on port 4190 of the primary, with the logins and bans of IMAP."""
