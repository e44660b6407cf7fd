"""moto's standalone server, naming certificates as AWS IoT does.

moto computes a certificate's id as the SHA-256 of its PEM text unless its IoT configuration sets
`use_valid_cert`, and its `/moto-api/config` endpoint does not take IoT settings; AWS IoT (and the
local IoT Core, which sees only the DER in the TLS handshake) uses the SHA-256 of the DER. Same
arguments as `moto_server`.
"""

import sys

from moto.core.config import default_user_config

default_user_config["iot"] = {"use_valid_cert": True}

from moto.server import main  # noqa: E402  (after the configuration it reads)

if __name__ == "__main__":
    sys.exit(main())
