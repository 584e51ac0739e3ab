"""Entry point for ``python -m partialseg`` (and ``torchrun -m partialseg``)."""

from partialseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
