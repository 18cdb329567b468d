"""Milters: a client of the milter protocol (version 6, as Postfix and Sendmail speak it), so that a milter an
administrator already runs (OpenDKIM, clamav-milter, spamass-milter, rspamd's milter mode) works here.

``codec`` is the wire format (pure), ``client`` the state machine of one milter connection, ``check`` the
pipeline's checks and the content scanner built from a filters.scanners entry of type milter.
"""

from appliance.filters.milter.check import Milter
from appliance.filters.milter.codec import MilterProtocolError

__all__ = ["Milter", "MilterProtocolError"]
