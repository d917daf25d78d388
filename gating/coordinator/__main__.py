from gating.coordinator.loop import main

raise SystemExit(main())
