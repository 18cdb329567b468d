"""Which checks this host runs at each stage of the pipeline, in order: the one place a check is registered.

A new check (a content filter, a DNSBL, SPF) is a module of its own in its room (filters/, ...) that
provides a callable per stage (pipeline/stages.py), and one line here that registers it where the config
asks for it.
"""

from __future__ import annotations

from appliance.abuse import limits as client_limits
from appliance.abuse.banned import RefuseBanned
from appliance.abuse.dictionary import DictionaryGuard
from appliance.abuse.limits import SessionHolds
from appliance.auth.bans import BanStore
from appliance.auth.directory import Directory
from appliance.config import Config
from appliance.filters import check as filters
from appliance.pipeline import limits, smuggling
from appliance.pipeline.recipients import RecipientCheck, RecipientPolicy
from appliance.pipeline.senders import SenderOwnership
from appliance.pipeline.stages import Pipeline, Stage
from appliance.screening import check as screening
from appliance.screening import greylist
from appliance.senderauth import check as senderauth
from appliance.signing import check as signing
from appliance.signing.signer import Signer


def build_pipeline(config: Config, policy: RecipientPolicy, directory: Directory | None,
                   holds: SessionHolds | None = None, bans: BanStore | None = None,
                   signer: Signer | None = None) -> Pipeline:
    pipeline = Pipeline()
    if bans is not None:  # banned clients get 421 4.7.0 at connect, on every listener
        pipeline.register(Stage.CONNECT, RefuseBanned(bans))
    if holds is not None:  # the per-client limits (anvil) before anything else: a refused client costs nothing
        client_limits.register(pipeline, config, holds)
    # The limits first: they cost nothing and spare the later checks the work.
    limits.register(pipeline, config.smtp.max_message_size, config.smtp.max_recipients)
    screening.register(pipeline, config)  # MX listener, CONNECT: DNSBL/DNSWL score, pregreet test
    pipeline.register(Stage.MAIL, SenderOwnership(directory))  # submission users send as themselves
    recipients = RecipientCheck(policy)  # no open relay; local users, backup, forward
    # Unknown recipients (550 5.1.1) from one client: slower replies, then a ban.
    pipeline.register(Stage.RCPT, DictionaryGuard(recipients, bans, config.bans.dictionary)
                      if bans is not None else recipients)
    greylist.register(pipeline, config)  # greylisting.enabled: 451 4.7.1 for a triplet's first attempt
    pipeline.register(Stage.DATA, smuggling.line_endings)
    # Sender authentication before the content filters: forged Authentication-Results go on every host, and
    # where sender_auth is on, SPF and iprev at MAIL, DKIM, ARC and DMARC at DATA.
    senderauth.register(pipeline, config)
    # The content filters last: the trusted-gateway rule on every host, the scanners where configured (their
    # connections are closed when the pipeline stops).
    filters.register(pipeline, config)
    # Signing after everything else: the ARC seal and the DKIM signatures cover every header this host adds.
    signing.register(pipeline, config, signer)
    return pipeline
