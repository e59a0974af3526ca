"""A side started by ``dualmcu run``: its whole configuration arrives as one object on stdin.

The parent builds :class:`~dualmcu.sides.NcpOptions` or :class:`~dualmcu.sides.PrimaryOptions`
from its own validated options and pickles them to the child, so that no option is turned
back into command-line text and parsed a second time, and no default is written down twice.
The child imports the side it runs and nothing of the command line.

    python -m dualmcu.child < pickled (side, options)

Only ``dualmcu run`` starts this, with a pipe it writes itself: the pickle never comes from
a file or a peer.
"""

from __future__ import annotations

import copyreg
import pickle
import sys
from typing import IO, Union

from .sides import NcpOptions, PrimaryOptions, run_ncp, run_primary

Options = Union[NcpOptions, PrimaryOptions]


def _raw_key(key):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return Ed25519PublicKey.from_public_bytes, (key.public_bytes(Encoding.Raw, PublicFormat.Raw),)


def send(options: Options, stream: IO[bytes]) -> None:
    """Write a side's options for a child; a trusted key travels as its 32 raw bytes."""
    trust = options.config.trust if isinstance(options, PrimaryOptions) else None
    if trust is not None and trust.keys:
        # A key object of the cryptography package does not pickle by itself.
        copyreg.pickle(type(next(iter(trust.keys.values()))), _raw_key)
    pickle.dump(options, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.close()


def main() -> int:
    options: Options = pickle.load(sys.stdin.buffer)
    return run_ncp(options) if isinstance(options, NcpOptions) else run_primary(options)


if __name__ == "__main__":
    sys.exit(main())
