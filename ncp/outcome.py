"""How an update ended, in one vocabulary: the cloud's outcomes and the final verdicts.

``Outcome`` members are strings (a JSON line read back compares equal to its member, and the
stream a tool reads is unchanged), so every place that decides or reads how an update ended
names a member: a misspelt outcome fails at import time, not in a branch that never matches.

The cloud records an outcome when it knows one (``success`` the moment the new version reports
in); a process that ends on the update ends on a *verdict* (``NcpDevice.verdict``): the outcome
itself, or after a success ``confirmed``, ``reported`` or ``unconfirmed``.
"""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    # The cloud's records (docs/events.md, ota_outcome)
    SUCCESS = "success"  # the new version reported in
    ROLLBACK = "rollback"  # the old version reported back after Finish (or after a success)
    UP_TO_DATE = "up_to_date"  # the primary already ran the shipment's version
    REFUSED = "refused"  # the primary said no to the offer
    WRONG_TYPE = "wrong_type"  # the shipment is another product's: never offered
    START_TIMEOUT = "start_timeout"  # accepted, never started, offers spent
    INTERRUPTED = "interrupted"  # the primary restarted mid-transfer, offers spent
    DEFERRED = "deferred"  # the primary put the update off past max_defer
    PREFETCH_FAILED = "prefetch_failed"
    DOWNLOAD_FAILED = "download_failed"
    DOWNLOAD_LIMIT = "download_limit"  # a chunk ran out of tries
    DEVICE_FAILED = "device_failed"  # the primary's telemetry said the transfer failed
    FINISH_FAILED = "finish_failed"
    NO_REPORT = "no_report"  # nothing from the primary after Finish
    TIMEOUT = "timeout"  # no outcome within the time the caller allowed (a fleet's device)
    # The verdicts after a success (a process that ends on the update)
    CONFIRMED = "confirmed"  # the primary's telemetry says the new version is confirmed
    REPORTED = "reported"  # no telemetry: the new version ran through the window
    UNCONFIRMED = "unconfirmed"  # telemetry, but no confirmation within the window

    __str__ = str.__str__
    __format__ = str.__format__


# The judge's table: the verdicts that mean the update worked, and the one that means no
# verdict came in time; every other verdict is a failure.
WORKED = frozenset({Outcome.CONFIRMED, Outcome.REPORTED, Outcome.UP_TO_DATE})
NO_VERDICT = Outcome.UNCONFIRMED
# Where the cloud moved on to the next file of a release instead of ending (a package that
# failed on the device).
FALLBACK = frozenset({Outcome.DEVICE_FAILED, Outcome.DOWNLOAD_LIMIT, Outcome.FINISH_FAILED})
# The outcomes after which the cloud's record is final and the NCP process may end.
FINAL = frozenset({Outcome.SUCCESS, Outcome.UP_TO_DATE, Outcome.ROLLBACK})
