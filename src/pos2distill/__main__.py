from pos2distill.cli import main

raise SystemExit(main())
