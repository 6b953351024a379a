from asc_jax.submission.cli import main

raise SystemExit(main())
