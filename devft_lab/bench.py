"""``python -m devft_lab.bench``: the runtime benchmark (:mod:`devft_lab.experiments.bench`)."""
from devft_lab.experiments.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
