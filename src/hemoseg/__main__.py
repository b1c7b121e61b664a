from hemoseg.cli.main import main

raise SystemExit(main())
