from RCSegNeXtCore.cli import main

raise SystemExit(main())
