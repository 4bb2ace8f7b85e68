"""``python -m compressor`` is the same as the ``demp`` command (also under torchrun)."""

from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
