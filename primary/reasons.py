"""Reason codes: why an update or a boot failed, as the primary persists and reports them.

Events name a reason in words; the boot state keeps its code (two bytes survive a reboot
where a string would not fit), and telemetry reports both.  One table, so the code a device
persisted today means the same thing to the tool that reads its flash tomorrow.  Codes are
never reused; a reason with a detail after a colon ("prefetch_failed:download_timeout")
is persisted under the part before the colon.
"""

from __future__ import annotations

REASONS: dict[int, str] = {
    0: "none",
    # after a reboot: why a trial image was rolled back, or what the running image did
    1: "health_check_failed",
    2: "commit_timeout",
    4: "trial_attempts_spent",  # (3 is kept free: a crash cannot write its own reason)
    5: "trial_image_does_not_verify",
    6: "image_does_not_verify",
    7: "config_unreadable",
    # an offer refused
    10: "wrong_type",
    11: "not_newer",
    12: "too_large",
    13: "size_zero",
    14: "low_battery",
    15: "trial_pending",
    16: "bad_offer",
    17: "busy",
    18: "hw_rev_mismatch",
    19: "bootloader_too_old",
    20: "not_mandatory",
    # a transfer abandoned
    30: "chunk_crc",
    31: "chunk_size",
    32: "past_end",
    33: "offset_mismatch",
    34: "flash_error",
    35: "timeout",
    36: "ncp_cancel",
    37: "size_mismatch",
    38: "start_refused",
    39: "start_failed",
    40: "prefetch_failed",
    41: "replaced_by_new_offer",
    # an image received whole but not installed
    50: "digest_unavailable",
    51: "crc_mismatch",
    52: "sha256_mismatch",
    53: "image_untagged",
    54: "image_wrong_type",
    55: "image_not_as_offered",
    56: "image_not_newer",
    57: "signature_unsigned",
    58: "signature_unknown_key",
    59: "signature_bad_signature",
    60: "signature_digest_mismatch",
    61: "signature_wrong_target",
    62: "signature_counter_too_low",
    63: "image_hw_rev_mismatch",
    64: "image_bootloader_too_old",
    65: "signature_bootloader_too_old",
    # a package (docs/packages.md) refused or failed
    70: "package_base_mismatch",
    71: "package_needs_ram",
    72: "package_corrupt",
    73: "package_image_mismatch",
    255: "other",
}
CODES: dict[str, int] = {name: code for code, name in REASONS.items()}


def code_of(reason: str) -> int:
    """The code persisted for ``reason`` (255 for a reason this table does not list)."""
    return CODES.get(reason.split(":", 1)[0], CODES["other"])


def name_of(code: int) -> str:
    return REASONS.get(code, f"unknown_{code}")
