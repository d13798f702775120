from blurdiff.cli import main

raise SystemExit(main())
