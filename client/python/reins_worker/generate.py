"""``python -m reins_worker.generate``: (re)compile the Reins protos into Python stubs.

Writes ``reins_worker/_generated/`` (gitignored) from ``<repo>/proto`` or
``$REINS_PROTO_DIR`` with grpcio-tools. Importing :mod:`reins_worker` already does this
when the stubs are missing or older than the protos; this command regenerates them
unconditionally, for install scripts and CI.
"""

import sys

from reins_worker import proto


def main() -> int:
    out = proto.generate()
    print(f"generated Reins stubs in {out} from {proto.proto_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
