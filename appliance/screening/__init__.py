"""Screening of SMTP clients before and at the greeting, as Postfix's postscreen does: the pregreet test,
DNSBL and DNSWL scores, and greylisting."""
