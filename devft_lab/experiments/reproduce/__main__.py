from devft_lab.experiments.reproduce.cli import main

raise SystemExit(main())
