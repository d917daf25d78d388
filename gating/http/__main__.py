from gating.http import main

raise SystemExit(main())
