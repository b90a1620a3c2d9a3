from relax_rl.cli import main

raise SystemExit(main())
