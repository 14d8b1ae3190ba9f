"""healthdock-mirror's command line; the service lives in ``receiver``, ``sync``, ``mirror``."""
